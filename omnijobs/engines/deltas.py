"""Token deltas while `generate` runs: a step hook that publishes each row's new text.

It rides along as a stopping criterion (transformers calls those once per step with every row's
tokens so far) and never stops a row itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

from omnijobs.engines.base import StageRequest
from omnijobs.streaming.deltas import TextDeltas


class StepDeltas(StoppingCriteria):
    """Per step, one `emit` call with a delta for every row that gained text.

    A row's tokens are counted the way results are cut (up to a stop token or max_tokens), so
    what was sent is always a prefix of the row's final text; `finish` sends the rest.
    """

    def __init__(self, requests: Sequence[StageRequest], max_tokens: Sequence[int], stop_ids: Sequence[int],
                 decode: Callable[[Sequence[int]], str], emit: Callable[[list[tuple[StageRequest, dict]]], None]):
        self.requests = list(requests)
        self.max_tokens = list(max_tokens)
        self.stop_ids = set(stop_ids)
        self.emit = emit
        self.tokens: list[list[int]] = [[] for _ in self.requests]
        self.done = [False] * len(self.requests)
        self.text = TextDeltas(decode, len(self.requests))

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        out = []
        for j, token in enumerate(input_ids[:, -1].tolist()):
            if self.done[j]:
                continue
            if token in self.stop_ids:
                self.done[j] = True
                continue
            self.tokens[j].append(token)
            self.done[j] = len(self.tokens[j]) >= self.max_tokens[j]
            new = self.text.step(j, self.tokens[j])
            if new is not None:
                out.append((self.requests[j], {"text": new[0], "token_ids": new[1]}))
        if out:
            self.emit(out)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def finish(self, rows: Sequence[tuple[int, list[int], str]]) -> None:
        """After `generate`: (row, final tokens, final text) of each row; sends what is left, marked done."""
        out = []
        for j, tokens, text in rows:
            rest = self.text.finish(j, tokens, text) or ("", [])
            reason = "length" if len(tokens) >= self.max_tokens[j] else "stop"
            delta: dict[str, Any] = {"text": rest[0], "token_ids": rest[1], "done": True, "finish_reason": reason}
            out.append((self.requests[j], delta))
        if out:
            self.emit(out)


def step_deltas(ctx, requests, max_tokens, stop_ids, decode) -> StepDeltas | None:
    """A StepDeltas for this batch, or None when the engine's context publishes nowhere."""
    from omnijobs.engines.base import _no_deltas

    if ctx.emit_delta is _no_deltas:
        return None
    return StepDeltas(requests, max_tokens, stop_ids, decode, ctx.emit_delta)
