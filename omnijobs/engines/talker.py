"""Batched codec generation for the omni talkers: rows from the glue, left-padded, one `generate`."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from omnijobs.engines.base import StageRequest
from omnijobs.engines.omni_glue import TalkerRow
from omnijobs.engines.sampling import sampling_row
from omnijobs.errors import FatalStageError
from omnijobs.streaming.chunks import whole_chunks


class MinCodes(LogitsProcessor):
    """Keeps each row from ending before its own `min_tokens` codes."""

    def __init__(self, prompt_len: int, min_tokens: list[int], eos_ids: list[int]):
        self.prompt_len = prompt_len
        self.min_tokens = torch.tensor(min_tokens)
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        early = (input_ids.shape[1] - self.prompt_len < self.min_tokens).to(scores.device)
        if early.any():
            scores[:, self.eos_ids] = scores[:, self.eos_ids].masked_fill(early.unsqueeze(1), float("-inf"))
        return scores


def collate(rows: list[TalkerRow], codec_pad: int, device: str) -> dict[str, torch.Tensor]:
    """Left-pad the prefills, right-pad the per-step text with each row's pad vector."""
    width = max(r.embeds.shape[0] for r in rows)
    steps = max(r.text.shape[0] for r in rows)
    dim = rows[0].embeds.shape[1]
    embeds = torch.zeros((len(rows), width, dim))
    ids = torch.full((len(rows), width), codec_pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    text = torch.zeros((len(rows), steps, rows[0].text.shape[1]))
    text_ids = torch.zeros((len(rows), width), dtype=torch.long) if rows[0].text_ids is not None else None
    for j, r in enumerate(rows):
        n = r.embeds.shape[0]
        embeds[j, width - n:] = r.embeds
        ids[j, width - n:] = r.ids
        mask[j, width - n:] = 1
        text[j, : r.text.shape[0]] = r.text
        text[j, r.text.shape[0]:] = r.pad
        if text_ids is not None:
            text_ids[j, width - n:] = r.text_ids
    out = {"inputs_embeds": embeds, "input_ids": ids, "attention_mask": mask, "text": text,
           "pad": torch.stack([r.pad for r in rows]).unsqueeze(1)}
    if text_ids is not None:
        out["text_ids"] = text_ids
    for key in ("image_grid_thw", "audio_feature_lengths"):
        parts = [r.extras[key] for r in rows if key in r.extras]
        if parts:
            out[key] = torch.cat(parts)
    return {k: v.to(device) for k, v in out.items()}


def talker_sampling(run_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Per-row sampling state, as the LM engine keeps it, plus the row's minimum number of codes."""
    defaults = {"max_tokens": 64, "temperature": 0.9, "top_p": 0.8, "seed": None}
    row = sampling_row(StageRequest(run_id, {}, {**defaults, **{k: v for k, v in params.items() if k in defaults}}))
    row["min_tokens"] = int(params.get("min_tokens", 1))
    if row["min_tokens"] > row["max_tokens"]:
        raise FatalStageError(f"min_tokens {row['min_tokens']} exceeds max_tokens {row['max_tokens']}")
    return row


class CodeStream(StoppingCriteria):
    """Hands each row's codec frames to the streamed edge while `generate` runs.

    Frames arrive through `capture` (a forward hook: the model returns the frame it completed at
    each step), or, for a one-codebook talker (`from_tokens`), are the generated codes themselves,
    sent as (1, n); a frame counts once its row's first-group code is known not to end the row. Whole
    chunks go out as they fill (`first_chunk` frames, then `chunk`); `finish` sends the rest of the
    recorded codes with the end mark, so a row's chunks always join to exactly its `codes` output.
    It never stops a row itself.
    """

    def __init__(self, ctx, port: str, stream, requests, max_tokens: list[int], eos_ids: list[int], prompt_len: int,
                 from_tokens: bool = False):
        self.ctx, self.port, self.stream, self.from_tokens = ctx, port, stream, from_tokens
        self.requests, self.max_tokens = list(requests), max_tokens
        self.eos_ids, self.prompt_len = torch.tensor(eos_ids), prompt_len
        self.frames: list[torch.Tensor] = []  # per step: (B, G) codes
        self.sent = [0] * len(self.requests)
        self.ended = [False] * len(self.requests)

    def capture(self, module, args, output) -> None:
        codes = output.hidden_states[1] if isinstance(output.hidden_states, tuple) else None
        if codes is not None:
            self.frames.append(codes.detach().to("cpu", torch.long))

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tokens = input_ids[:, self.prompt_len:].cpu()
        n = tokens.shape[1] if self.from_tokens else len(self.frames)
        stop = torch.isin(tokens[:, :n], self.eos_ids)
        out = []
        for j, req in enumerate(self.requests):
            hit = stop[j].nonzero()
            valid = min(int(hit[0]) if hit.numel() else n, self.max_tokens[j])
            for start, end in whole_chunks(self.sent[j], valid, self.stream):
                if self.from_tokens:
                    frames = tokens[j, start:end].unsqueeze(0)
                else:
                    frames = torch.stack([f[j] for f in self.frames[start:end]], dim=1)
                out.append((req, self.port, frames, False))
                self.sent[j] = end
        if out:
            self.ctx.chunks.emit_many(out)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def finish(self, codes: list[torch.Tensor | None]) -> None:
        """After `generate`: each row's recorded (G, T) codes (None: the row failed); ends every stream."""
        out = []
        for j, req in enumerate(self.requests):
            row = codes[j]
            if row is None:
                continue
            if self.sent[j] > row.shape[1]:
                raise RuntimeError(f"streamed {self.sent[j]} frames but recorded {row.shape[1]}")
            rest = row[:, self.sent[j]:]
            out.append((req, self.port, rest if rest.shape[1] else None, True))
        if out:
            self.ctx.chunks.emit_many(out)


def code_stream(ctx, port: str, requests, max_tokens, eos_ids, prompt_len, from_tokens: bool = False
                ) -> CodeStream | None:
    """A CodeStream when a downstream stage reads `port` as a stream, else None."""
    stream = ctx.chunks.outgoing.get(port) if ctx.chunks is not None else None
    if stream is None:
        return None
    return CodeStream(ctx, port, stream, requests, max_tokens, eos_ids, prompt_len, from_tokens)
