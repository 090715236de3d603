"""Per-row sampling and stopping inside one batched `generate`, shared by the LM engines.

Sampling happens in a logits processor with a random generator per row, so a row's tokens depend
on its own params and seed, not on its batch neighbours.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from omnijobs.engines.base import StageRequest


class RowSampler(LogitsProcessor):
    """Picks each row's next token with that row's temperature, top-p and generator.

    Returns logits that are -inf everywhere but the chosen token, so greedy decoding takes it.
    """

    def __init__(self, rows: list[dict[str, Any]], stop_ids: list[int]):
        self.rows = rows
        self.stop_ids = stop_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        for i, row in enumerate(self.rows):
            logits = scores[i]
            if row["ignore_eos"] and self.stop_ids:
                logits = logits.clone()
                logits[self.stop_ids] = float("-inf")
            chosen[i] = _pick(logits, row["temperature"], row["top_p"], row["generator"])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), chosen.to(scores.device)] = 0.0
        return out


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class RowStop(StoppingCriteria):
    """Ends each row at its own max_tokens, or at once if its job was canceled."""

    def __init__(self, prompt_len: int, max_tokens: list[int], run_ids: list[str], should_stop):
        self.prompt_len = prompt_len
        self.max_tokens = torch.tensor(max_tokens)
        self.run_ids = run_ids
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_len
        done = (generated >= self.max_tokens).to(input_ids.device)
        canceled = torch.tensor([bool(self.should_stop(r)) for r in self.run_ids], device=input_ids.device)
        return done | canceled


def sampling_row(req: StageRequest) -> dict[str, Any]:
    p = req.params
    generator = torch.Generator()
    seed = p.get("seed")
    generator.manual_seed(int(seed) if seed is not None else torch.seed())
    return {
        "max_tokens": int(p.get("max_tokens", 16)),
        "temperature": float(p.get("temperature", 1.0)),
        "top_p": float(p.get("top_p", 1.0)),
        "ignore_eos": bool(p.get("ignore_eos", False)),
        "generator": generator,
    }


def cut_at_stop(tokens: list[int], max_tokens: int, stop_ids: set[int]) -> list[int]:
    tokens = tokens[:max_tokens]
    for k, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:k]
    return tokens


def stop_token_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids
