"""Per-row sampling across a batch: each row's params and seed, and nothing of its neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnijobs.engines.base import StageRequest
from omnijobs.engines.sampling import RowSampler, RowStop, RowStreams, sampling_row

VOCAB = 50


def row(**params) -> dict:
    return sampling_row(StageRequest("r", {}, params))


def draw(sampler: RowSampler, logits: torch.Tensor) -> torch.Tensor:
    out = sampler(torch.zeros((logits.shape[0], 1), dtype=torch.long), logits.clone())
    # Exactly one finite entry per row: the chosen token.
    assert torch.isfinite(out).sum(dim=1).tolist() == [1] * logits.shape[0]
    return out.argmax(dim=1)


def steps(rows: list[dict], logits: list[torch.Tensor], stop_ids=()) -> list[list[int]]:
    sampler = RowSampler(rows, list(stop_ids))
    return torch.stack([draw(sampler, step) for step in logits], dim=1).tolist()


def test_a_row_draws_the_same_tokens_alone_and_in_any_batch():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn((4, VOCAB), generator=gen) for _ in range(30)]
    params = [{"temperature": 0.7, "top_p": 0.9, "seed": 11}, {"temperature": 1.3, "seed": 12},
              {"temperature": 0.0}, {"temperature": 1.0, "top_k": 5, "seed": 13}]
    batched = steps([row(**p) for p in params], logits)
    for k, p in enumerate(params):
        assert steps([row(**p)], [step[k : k + 1] for step in logits])[0] == batched[k]
    # Other neighbours, another order: the same rows still draw the same tokens.
    order = [3, 1, 0, 2]
    shuffled = steps([row(**params[k]) for k in order], [step[order] for step in logits])
    assert [shuffled[order.index(k)] for k in range(4)] == batched
    # A different seed draws differently; the greedy row is the argmax at every step.
    assert steps([row(**{**params[1], "seed": 99})], [s[1:2] for s in logits])[0] != batched[1]
    assert batched[2] == [int(s[2].argmax()) for s in logits]


def test_same_seed_same_tokens_and_unseeded_rows_differ():
    logits = [torch.zeros((2, VOCAB))] * 40
    a = steps([row(seed=5), row(seed=5)], logits)
    assert a[0] == a[1]
    b = steps([row(), row()], logits)
    assert b[0] != b[1]


def test_draws_follow_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    sampler = RowSampler([row(temperature=0.5, seed=3)], [])
    counts = np.bincount([int(draw(sampler, logits)[0]) for _ in range(4000)], minlength=4) / 4000
    expected = torch.softmax(logits[0] / 0.5, dim=0).numpy()
    assert np.abs(counts - expected).max() < 0.03


def test_top_k_and_top_p_keep_only_their_tokens():
    # Probabilities 0.5, 0.25, 0.125, ... after the softmax.
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]])).repeat(3, 1)
    rows = [row(top_k=2, seed=1), row(top_p=0.7, seed=2), row(top_k=1, top_p=0.99, seed=3)]
    drawn = steps(rows, [logits] * 300)
    assert set(drawn[0]) == {0, 1}
    assert set(drawn[1]) == {0, 1}  # 0.5 before token 1 is below 0.7; 0.75 before token 2 is not
    assert set(drawn[2]) == {0}


def test_ignore_eos_bans_the_stop_tokens_for_its_row_only():
    logits = torch.full((2, VOCAB), -5.0)
    logits[:, 7] = 10.0  # the stop token is by far the likeliest
    drawn = steps([row(ignore_eos=True, seed=1), row(seed=1)], [logits] * 20, stop_ids=[7])
    assert 7 not in drawn[0]
    assert drawn[1].count(7) >= 19


def test_banned_tokens_are_never_drawn():
    logits = torch.zeros((1, VOCAB))
    logits[0, 10:] = float("-inf")
    drawn = steps([row(seed=4, top_p=1.0)], [logits] * 200)[0]
    assert set(drawn) <= set(range(10)) and len(set(drawn)) > 5


def test_rows_of_older_callers_without_seed_or_top_k():
    gen = torch.Generator()
    gen.manual_seed(8)
    old = {"max_tokens": 4, "temperature": 1.0, "top_p": 1.0, "ignore_eos": False, "generator": gen}
    assert steps([old], [torch.zeros((1, VOCAB))] * 10) == steps([row(seed=8)], [torch.zeros((1, VOCAB))] * 10)


def test_row_streams_are_uniform_and_per_seed():
    streams = RowStreams([1, 2, 1])
    draws = torch.stack([streams.uniform() for _ in range(2000)])
    assert torch.equal(draws[:, 0], draws[:, 2]) and not torch.equal(draws[:, 0], draws[:, 1])
    assert float(draws.min()) >= 0.0 and float(draws.max()) < 1.0
    assert abs(float(draws.mean()) - 0.5) < 0.03


def test_row_stop_per_row():
    stop = RowStop(prompt_len=2, max_tokens=[3, 8], run_ids=["a", "b"], should_stop=lambda r: r == "b")
    assert stop(torch.zeros((2, 5), dtype=torch.long), None).tolist() == [True, True]
    stop = RowStop(prompt_len=2, max_tokens=[3, 8], run_ids=["a", "b"], should_stop=lambda r: False)
    assert stop(torch.zeros((2, 4), dtype=torch.long), None).tolist() == [False, False]


@pytest.mark.parametrize("bad", [{"temperature": "hot"}, {"top_k": "many"}])
def test_bad_params_fail_loudly(bad):
    with pytest.raises(ValueError):
        row(**bad)
