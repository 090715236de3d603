"""The Qwen3-Omni talker's decode loop: rows join and leave between steps, one KV cache for all.

`generate` runs a fixed batch to its end, so a job that arrives while it runs waits for all of it
(its first audio too), and on the tiny models most of each step is the machinery of two nested
`generate` calls (the talker's, and the code predictor's at every frame), not the model. Here the
loop calls the model's modules itself:

- `join` prefills the new rows together and merges them into the running batch: the caches are
  left-padded to one length, the attention mask marks the padding, and each row keeps its own
  offset of the 3D positions (as `generate` keeps `rope_deltas`);
- `step` completes every row's frame (the code predictor draws the G-1 residual codes greedily
  after the first-group code), feeds the frame's summed embeddings plus the row's next text state
  to the talker, and draws each row's next first-group code with its own sampler;
- a row ends at end-of-speech (after its `min_tokens`) or at `max_tokens` frames, and leaves the
  batch at once (`drop`), so the others stop paying for it;
- a row whose text is still being written (the thinker streams it) gets more with `feed`; one
  whose next text state has not come is `park`ed (its cache taken out of the batch) and
  `unpark`ed when it has, so it never holds up the others.

The inputs and draws are those of `generate` (same projections, same per-row random streams, the
code predictor greedy as the engine runs it), so a row's codes do not depend on its neighbours or
on when it joined, to float rounding of the padded attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from omnijobs.engines.base import StageRequest
from omnijobs.engines.omni_glue import TalkerRow
from omnijobs.engines.sampling import RowSampler
from omnijobs.engines.talker import collate


@dataclass
class LoopRow:
    req: StageRequest
    sampling: dict[str, Any]
    text: torch.Tensor  # (steps, D): the reply's text states, one per step after the prefill
    pad: torch.Tensor  # (D,): fed once the text has run out
    frames: list[torch.Tensor] = field(default_factory=list)  # (G,) each
    step: int = 0  # decode steps taken (the text state it reads next)
    ended: bool = False
    text_done: bool = True  # False while more text states are to come (`feed`)

    def starving(self) -> bool:
        """Whether its next step needs a text state that has not come yet."""
        return not self.text_done and self.step >= self.text.shape[0]


@dataclass
class Parked:
    """A row taken out of the batch with everything it needs to go back in."""

    row: LoopRow
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # its keys and values, (1, H, L, D) per layer
    mask: torch.Tensor
    delta: torch.Tensor
    hidden: torch.Tensor
    code: torch.Tensor
    sampler: RowSampler


class TalkerLoop:
    """The running batch of one Qwen3-Omni talker (a `Qwen3OmniMoeTalkerForConditionalGeneration`)."""

    def __init__(self, model, device, suppress: list[int], eos_id: int):
        self.m, self.device, self.eos_id = model, device, eos_id
        vocab = model.config.text_config.vocab_size
        self.suppress = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.suppress[suppress] = True
        self.groups = model.config.num_code_groups
        self.rows: list[LoopRow] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.deltas = torch.zeros((0, 1), dtype=torch.long, device=device)  # 3D position offset per row
        self.hidden = torch.zeros((0, 1, model.config.text_config.hidden_size), device=device)
        self.code = torch.zeros((0,), dtype=torch.long)  # the first-group code of each row's next frame
        self.sampler: RowSampler | None = None
        # Called once a step's frames are complete, before the talker's forward for the next:
        # frames sent from here reach the decoder one forward sooner.
        self.on_frames: Callable[[], None] | None = None

    # ------------------------------------------------------------------ rows in and out

    def join(self, reqs: list[StageRequest], rows: list[TalkerRow], samplings: list[dict[str, Any]]) -> list[LoopRow]:
        """Prefill these rows together, draw their first codes and add them to the batch; the rows
        that ended at once (their first code ends the speech) are returned, not added."""
        m = self.m
        enc = collate(rows, 0, self.device)
        extra = {k: enc[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in enc}
        cache = DynamicCache(config=m.config.text_config)
        m.rope_deltas = None
        out = m(inputs_embeds=enc["inputs_embeds"], attention_mask=enc["attention_mask"],
                talker_input_ids=enc["input_ids"], past_key_values=cache, use_cache=True,
                output_hidden_states=True, **extra)
        new = [LoopRow(req, s, row.text.to(self.device), row.pad.to(self.device))
               for req, row, s in zip(reqs, rows, samplings, strict=True)]
        sampler = RowSampler(samplings, [self.eos_id])
        code = self._draw(out.logits[:, -1], sampler, new)
        self._merge(new, cache, enc["attention_mask"], m.rope_deltas, out.hidden_states[0][-1][:, -1:], code, sampler)
        return self._end([len(self.rows) - len(new) + j for j in range(len(new)) if int(code[j]) == self.eos_id])

    def abort(self, run_ids: set[str]) -> list[LoopRow]:
        return self._end([j for j, r in enumerate(self.rows) if r.req.run_id in run_ids])

    @staticmethod
    def feed(row: LoopRow, states: torch.Tensor | None, done: bool) -> None:
        """More of a row's text states (S, D); `done`: that was all of it."""
        if states is not None and states.shape[0]:
            row.text = torch.cat([row.text, states.to(row.text.device, row.text.dtype)])
        row.text_done = row.text_done or done

    def park(self, run_ids: set[str]) -> list[Parked]:
        """Take these rows out of the batch, their caches and draw state with them."""
        idx = [j for j, r in enumerate(self.rows) if r.req.run_id in run_ids]
        out = []
        for j in idx:
            lead = int((self.mask[j].cumsum(0) == 0).sum())  # its left padding
            out.append(Parked(
                self.rows[j],
                [(layer.keys[j: j + 1, :, lead:].clone(), layer.values[j: j + 1, :, lead:].clone())
                 for layer in self.cache.layers],
                self.mask[j: j + 1, lead:].clone(), self.deltas[j: j + 1] + lead, self.hidden[j: j + 1].clone(),
                self.code[j: j + 1].clone(), self.sampler.subset([j])))
        self._drop(idx)
        return out

    def unpark(self, parked: list[Parked]) -> None:
        """Put parked rows back into the batch, as they were."""
        for p in parked:
            cache = DynamicCache(config=self.m.config.text_config)
            for i, (keys, values) in enumerate(p.layers):
                cache.update(keys, values, i)
            self._merge([p.row], cache, p.mask, p.delta, p.hidden, p.code, p.sampler)

    # ------------------------------------------------------------------ one step

    def step(self) -> list[LoopRow]:
        """Complete every row's pending frame and draw the next code; the rows that ended (they
        have left the batch)."""
        m, cp = self.m, self.m.code_predictor
        first = self.code.to(self.device).unsqueeze(1)  # (B, 1)
        first_embed = m.get_input_embeddings()(first)
        residual, embeds = [first], [first_embed]
        cp_cache = DynamicCache(config=cp.config)
        out = cp(inputs_embeds=torch.cat((self.hidden, first_embed), dim=1), past_key_values=cp_cache, use_cache=True)
        for k in range(1, self.groups):
            code = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            residual.append(code)
            embeds.append(cp.get_input_embeddings()[k - 1](code))
            if k < self.groups - 1:
                out = cp(input_ids=code, generation_steps=k, past_key_values=cp_cache, use_cache=True)
        frame = torch.cat(residual, dim=1).cpu()  # (B, G)
        # The frame's summed code embeddings (in the order `generate` sums them) plus the next text state.
        inputs = torch.cat(embeds, dim=1).sum(1, keepdim=True)
        for j, r in enumerate(self.rows):
            r.frames.append(frame[j])
        if self.on_frames is not None:
            self.on_frames()
        full = [j for j, r in enumerate(self.rows) if len(r.frames) >= r.sampling["max_tokens"]]
        if full:
            gone = set(full)
            live = torch.tensor([j for j in range(len(self.rows)) if j not in gone], dtype=torch.long,
                                device=self.device)
            inputs = inputs[live]
        ended = self._end(full)
        if not self.rows:
            return ended
        text = torch.stack([r.text[r.step] if r.step < r.text.shape[0] else r.pad for r in self.rows])
        inputs = inputs + text.unsqueeze(1)
        positions = (self.mask.shape[1] + self.deltas).view(1, -1, 1).expand(3, -1, -1)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long, device=self.device)], 1)
        out = m(inputs_embeds=inputs, attention_mask=self.mask, position_ids=positions, past_key_values=self.cache,
                use_cache=True, output_hidden_states=True, generation_step=0)
        for r in self.rows:
            r.step += 1
        self.hidden = out.hidden_states[0][-1][:, -1:]
        self.code = self._draw(out.logits[:, -1], self.sampler, self.rows)
        # A row whose next code ends its speech is done: its frames are complete.
        return ended + self._end([j for j in range(len(self.rows)) if int(self.code[j]) == self.eos_id])

    # ------------------------------------------------------------------ inside

    def _draw(self, logits: torch.Tensor, sampler: RowSampler, rows: list[LoopRow]) -> torch.Tensor:
        """Each row's next first-group code: control tokens suppressed, end-of-speech held back
        until the row's `min_tokens`, then the row's own sampler."""
        scores = logits.float().masked_fill(self.suppress, float("-inf"))
        early = torch.tensor([len(r.frames) < r.sampling["min_tokens"] for r in rows], device=scores.device)
        if early.any():
            scores[:, self.eos_id] = scores[:, self.eos_id].masked_fill(early, float("-inf"))
        return sampler(None, scores).argmax(dim=-1).cpu()

    def _end(self, gone: list[int]) -> list[LoopRow]:
        """Take these rows (by index) out of the batch; they are returned, marked ended."""
        out = self._drop(gone)
        for r in out:
            r.ended = True
        return out

    def _drop(self, gone: list[int]) -> list[LoopRow]:
        """Take these rows (by index) out of the batch and return them."""
        if not gone:
            return []
        out = [self.rows[j] for j in gone]
        leaving = set(gone)
        keep = [j for j in range(len(self.rows)) if j not in leaving]
        self.rows = [self.rows[j] for j in keep]
        if not keep:
            self.cache, self.sampler = None, None
            self.mask, self.deltas = self.mask[:0, :0], self.deltas[:0]
            self.hidden, self.code = self.hidden[:0], self.code[:0]
            return out
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.code = self.code[index.cpu()]
        self.hidden, self.mask, self.deltas = self.hidden[index], self.mask[index], self.deltas[index]
        self.sampler = self.sampler.subset(keep)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        # Columns that are padding for every row left: cut them (the offsets keep the positions).
        lead = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min())
        if lead:
            self.mask = self.mask[:, lead:]
            self.deltas = self.deltas + lead
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
        return out

    def _merge(self, new: list[LoopRow], cache: DynamicCache, mask: torch.Tensor, deltas: torch.Tensor,
               hidden: torch.Tensor, code: torch.Tensor, sampler: RowSampler) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.deltas = new, cache, mask, deltas
            self.hidden, self.code, self.sampler = hidden, code, sampler
            return
        width = max(self.mask.shape[1], mask.shape[1])
        old_pad, new_pad = width - self.mask.shape[1], width - mask.shape[1]
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, old_pad), _left_pad(theirs.keys, new_pad)])
            mine.values = torch.cat([_left_pad(mine.values, old_pad), _left_pad(theirs.values, new_pad)])
        self.mask = torch.cat([_left_pad(self.mask, old_pad), _left_pad(mask, new_pad)])
        # A row's position is its cache length plus its offset: padding added on its left moves it back.
        self.deltas = torch.cat([self.deltas - old_pad, deltas - new_pad])
        self.rows = self.rows + new
        self.hidden = torch.cat([self.hidden, hidden])
        self.code = torch.cat([self.code, code])
        self.sampler = self.sampler.concat(sampler)


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad dim 2 of a cache tensor (B, H, L, D) or dim 1 of a mask (B, L) with n zeros on the left."""
    if n == 0:
        return t
    dim = 2 if t.dim() == 4 else 1
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)
