"""Per-row sampling and stopping inside one batched `generate`, shared by the LM engines.

Sampling happens in a logits processor with a random stream per row, so a row's tokens depend on
its own params and seed, not on its batch neighbours; the batch is sampled in tensor operations.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, StoppingCriteria

from omnijobs.engines.base import StageRequest


class RowStreams:
    """One random stream per row, drawn for every row at once: SplitMix64 over numpy's uint64.

    A row's k-th draw depends only on its seed and k, so its tokens are the same alone or in any
    batch, and a step costs a few array operations whatever the batch size (one torch generator
    per row would need a call per row per step).
    """

    GAMMA = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, seeds: list[int]):
        self.state = _mix(np.array([s & 0xFFFFFFFFFFFFFFFF for s in seeds], dtype=np.uint64))

    def uniform(self) -> torch.Tensor:
        """The next float32 in [0, 1) of every row."""
        with np.errstate(over="ignore"):
            self.state = self.state + self.GAMMA
        # 24 bits: every value is exact in float32 and below 1.
        return torch.from_numpy((_mix(self.state) >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24))


def _mix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class RowSampler(LogitsProcessor):
    """Picks each row's next token with that row's temperature, top-k, top-p and random stream, for
    the whole batch in tensor operations.

    Returns logits that are -inf everywhere but the chosen token, so greedy decoding takes it.
    Rows are dicts from `sampling_row` (keys missing from older callers take neutral values).
    """

    def __init__(self, rows: list[dict[str, Any]], stop_ids: list[int]):
        self.rows = rows
        self.stop_ids = list(stop_ids)
        self.temperature = torch.tensor([float(r["temperature"]) for r in rows])
        self.greedy = self.temperature <= 0
        self.temperature = torch.where(self.greedy, torch.ones_like(self.temperature), self.temperature)
        self.top_p = torch.tensor([float(r.get("top_p", 1.0)) for r in rows])
        self.top_k = torch.tensor([int(r.get("top_k") or 0) for r in rows])
        self.ban_stop = torch.tensor([bool(r.get("ignore_eos")) for r in rows]) & bool(self.stop_ids)
        self.streams = RowStreams([_row_seed(r) for r in rows])
        self.all_greedy = bool(self.greedy.all())
        self.filtered_rows = ((self.top_p < 1.0) | (self.top_k > 0)).numpy()
        self.filtered = bool(self.filtered_rows.any())
        self.top_p_np = self.top_p.numpy()[:, None]
        # top-k 0 means no limit.
        self.top_k_np = np.where(self.top_k.numpy() > 0, self.top_k.numpy(), np.iinfo(np.int64).max)[:, None]
        self.rank = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float()
        if self.ban_stop.any():
            logits = logits.clone()
            banned = logits[:, self.stop_ids]
            logits[:, self.stop_ids] = banned.masked_fill(self.ban_stop.to(logits.device).unsqueeze(1), float("-inf"))
        chosen = logits.argmax(dim=-1).cpu()
        if not self.all_greedy:
            if self.rank is None:
                self.rank = np.arange(logits.shape[1])[None, :]
            chosen = torch.where(self.greedy, chosen, self._draw(logits.cpu()))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.to(scores.device).unsqueeze(1), 0.0)
        return out

    # A batch whose rows join and leave between steps keeps each row's stream where it is.

    def subset(self, keep: list[int]) -> RowSampler:
        """A sampler of these rows (by index), their streams as drawn so far."""
        out = RowSampler([self.rows[i] for i in keep], self.stop_ids)
        out.streams.state = self.streams.state[keep]
        return out

    def concat(self, other: RowSampler) -> RowSampler:
        """A sampler of these rows followed by the other's, each stream as drawn so far."""
        out = RowSampler(self.rows + other.rows, self.stop_ids)
        out.streams.state = np.concatenate([self.streams.state, other.streams.state])
        return out

    def _draw(self, logits: torch.Tensor) -> torch.Tensor:
        # numpy: its sort is several times faster than torch's on CPU at these sizes.
        probs = torch.softmax(logits / self.temperature.unsqueeze(1), dim=-1).numpy()
        if self.filtered:
            # Only rows with a filter draw in sorted order; the others draw in vocabulary order,
            # as they would in a batch with no filtered row.
            order = np.broadcast_to(self.rank, probs.shape).copy()
            f = self.filtered_rows
            order[f] = np.argsort(-probs[f], axis=1)
            probs = np.take_along_axis(probs, order, axis=1)
            # Each filter keeps a prefix of the sorted vocabulary: top-k by rank, top-p by the
            # mass before a token.
            keep = np.cumsum(probs, axis=1) - probs < self.top_p_np
            keep &= self.rank < self.top_k_np
            keep[:, 0] = True
            keep[~f] = True
            probs = probs * keep
        cdf = np.cumsum(probs, axis=1)
        target = self.streams.uniform().numpy() * cdf[:, -1]
        index = (cdf <= target[:, None]).sum(axis=1)
        # Float rounding may put the target on the total; take the last token that has mass.
        last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
        index = np.minimum(index, last)
        if self.filtered:
            index = np.take_along_axis(order, index[:, None], axis=1)[:, 0]
        return torch.from_numpy(index.astype(np.int64))


def _row_seed(row: dict[str, Any]) -> int:
    if row.get("seed") is not None:
        return int(row["seed"])
    return int(row["generator"].initial_seed())


class RowStop(StoppingCriteria):
    """Ends each row at its own max_tokens, or at once if its job was canceled."""

    def __init__(self, prompt_len: int, max_tokens: list[int], run_ids: list[str], should_stop):
        self.prompt_len = prompt_len
        self.max_tokens = torch.tensor(max_tokens)
        self.run_ids = run_ids
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_len
        done = generated >= self.max_tokens
        canceled = torch.tensor([bool(self.should_stop(r)) for r in self.run_ids])
        return (done | canceled).to(input_ids.device)


def sampling_row(req: StageRequest) -> dict[str, Any]:
    """A row's sampling params. `seed` is the row's own (a random one when the job gave none);
    `generator` is seeded with it for callers that draw from torch directly."""
    p = req.params
    seed = p.get("seed")
    seed = int(seed) if seed is not None else secrets.randbits(63)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return {
        "max_tokens": int(p.get("max_tokens", 16)),
        "temperature": float(p.get("temperature", 1.0)),
        "top_p": float(p.get("top_p", 1.0)),
        "top_k": int(p.get("top_k") or 0),
        "ignore_eos": bool(p.get("ignore_eos", False)),
        "seed": seed,
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
