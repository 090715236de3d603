"""The omni talkers' decode loop: rows join and leave between steps, one KV cache for all.

`generate` runs a fixed batch to its end, so a job that arrives while it runs waits for all of it
(its first audio too), and on the tiny models much of each step is `generate`'s own machinery, not
the model. Here the loop calls the model's modules itself:

- `join` prefills the new rows together and merges them into the running batch: the caches are
  left-padded to one length, the attention mask marks the padding, and each row keeps its own
  offset of the 3D positions (as `generate` keeps `rope_deltas`);
- `step` completes every row's frame from the code drawn last (the family's `_frame`), feeds the
  frame's embeddings plus the row's next text state to the talker, and draws each row's next
  first-group code with its own sampler;
- a row ends at end-of-speech (after its `min_tokens`) or at `max_tokens` frames, and leaves the
  batch at once (`drop`), so the others stop paying for it;
- a row whose text is still being written (the thinker streams it) gets more with `feed`; one
  whose next text state has not come is `park`ed (its cache taken out of the batch) and
  `unpark`ed when it has, so it never holds up the others.

The inputs and draws are those of `generate` (same embeddings, same per-row random streams), so a
row's codes do not depend on its neighbours or on when it joined, to float rounding of the padded
attention. A family subclass says how to prefill, how a frame is made, and how one step runs
(`_prefill`, `_frame`, `_forward`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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


class TalkerLoop(ABC):
    """The running batch of one talker model; a family subclass fills in its model's calls."""

    def __init__(self, model, device, suppress: list[int], eos_ids: list[int], cache_config, groups: int,
                 hidden_size: int):
        self.m, self.device, self.eos_ids, self.cache_config = model, device, list(eos_ids), cache_config
        self.eos = torch.tensor(self.eos_ids)
        self.suppress = torch.tensor(suppress, dtype=torch.long, device=device)  # indexed at every draw
        self.groups = groups  # codes per frame
        self.rows: list[LoopRow] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.deltas = torch.zeros((0, 1), dtype=torch.long, device=device)  # 3D position offset per row
        # What a frame is completed from besides its first code (Qwen3: the talker's last state).
        self.hidden = torch.zeros((0, 1, hidden_size), device=device)
        self.code = torch.zeros((0,), dtype=torch.long)  # the first-group code of each row's next frame
        self.sampler: RowSampler | None = None
        # Called once a step's frames are complete, before the talker's forward for the next:
        # frames sent from here reach the decoder one forward sooner.
        self.on_frames: Callable[[], None] | None = None

    # ------------------------------------------------------------------ the family's model calls

    @abstractmethod
    def _prefill(self, enc: dict[str, torch.Tensor], cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the collated rows' prefill into `cache`, setting the model's `rope_deltas`; returns
        the last position's logits (B, V) and carried state (B, 1, H)."""

    @abstractmethod
    def _frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's frame from its drawn code: the frame's codes (B, G) on the CPU and their
        summed embeddings (B, 1, D), the input of the next step before its text state."""

    @abstractmethod
    def _forward(self, inputs: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step of the batch on `self.cache` and `self.mask`; as `_prefill` returns."""

    # ------------------------------------------------------------------ rows in and out

    def join(self, reqs: list[StageRequest], rows: list[TalkerRow], samplings: list[dict[str, Any]]) -> list[LoopRow]:
        """Prefill these rows together, draw their first codes and add them to the batch; the rows
        that ended at once (their first code ends the speech) are returned, not added."""
        enc = collate(rows, 0, self.device)
        cache = DynamicCache(config=self.cache_config)
        self.m.rope_deltas = None
        logits, hidden = self._prefill(enc, cache)
        new = [LoopRow(req, s, row.text.to(self.device), row.pad.to(self.device))
               for req, row, s in zip(reqs, rows, samplings, strict=True)]
        sampler = RowSampler(samplings, self.eos_ids)
        code = self._draw(logits, sampler, new)
        self._merge(new, cache, enc["attention_mask"], self.m.rope_deltas, hidden, code, sampler)
        return self._end([len(self.rows) - len(new) + j for j in range(len(new)) if self._ends(code[j])])

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
            cache = DynamicCache(config=self.cache_config)
            for i, (keys, values) in enumerate(p.layers):
                cache.update(keys, values, i)
            self._merge([p.row], cache, p.mask, p.delta, p.hidden, p.code, p.sampler)

    # ------------------------------------------------------------------ one step

    def step(self) -> list[LoopRow]:
        """Complete every row's pending frame and draw the next code; the rows that ended (they
        have left the batch)."""
        frame, inputs = self._frame()
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
        logits, self.hidden = self._forward(inputs, positions)
        for r in self.rows:
            r.step += 1
        self.code = self._draw(logits, self.sampler, self.rows)
        # A row whose next code ends its speech is done: its frames are complete.
        return ended + self._end([j for j in range(len(self.rows)) if self._ends(self.code[j])])

    # ------------------------------------------------------------------ inside

    def _draw(self, logits: torch.Tensor, sampler: RowSampler, rows: list[LoopRow]) -> torch.Tensor:
        """Each row's next first-group code: control tokens suppressed, end-of-speech held back
        until the row's `min_tokens`, then the row's own sampler (the order of `generate`'s
        processors)."""
        scores = logits.float()
        if self.suppress.numel():
            scores[:, self.suppress] = float("-inf")
        early = torch.tensor([len(r.frames) < r.sampling["min_tokens"] for r in rows], device=scores.device)
        if early.any():
            scores[:, self.eos_ids] = scores[:, self.eos_ids].masked_fill(early.unsqueeze(1), float("-inf"))
        return sampler(None, scores).argmax(dim=-1).cpu()

    def _ends(self, code: torch.Tensor) -> bool:
        return bool((self.eos == code).any())

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
