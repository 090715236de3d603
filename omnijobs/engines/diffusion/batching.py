"""Grouping rows into compatible pipeline calls, per-row generators, and the per-step hook."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from omnijobs.engines.base import EngineContext, RowResult, StageRequest
from omnijobs.errors import FatalStageError, RetryableStageError, StageError


class Canceled(Exception):
    """Raised from inside a denoise loop when every row of the call was canceled."""


@dataclass
class Row:
    """One request prepared for a pipeline call: its index in the batch and what the engine read from it."""

    index: int
    run_id: str
    data: dict[str, Any]


@dataclass
class Group:
    key: Hashable
    rows: list[Row] = field(default_factory=list)

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.rows]


def generator(seed: Any) -> torch.Generator:
    """One CPU generator per row: its noise depends on its own seed only, not on its batch mates."""
    gen = torch.Generator("cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


class StepHook:
    """Reports step/steps for every row of a call and stops the call once all its rows are canceled.

    A row canceled while batch mates go on is failed when the call returns.
    """

    def __init__(self, ctx: EngineContext, run_ids: list[str], steps: int):
        self.ctx, self.run_ids, self.steps = ctx, run_ids, steps
        self.canceled: set[str] = set()
        self.step = 0

    def start(self) -> None:
        self._report()

    def after_step(self) -> None:
        self.step += 1
        self._report()
        self.canceled.update(r for r in self.run_ids if r not in self.canceled and self.ctx.should_stop(r))
        if len(self.canceled) == len(self.run_ids):
            raise Canceled()

    def on_step_end(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        """diffusers' `callback_on_step_end`."""
        self.after_step()
        return {}

    def legacy(self, i: int, t, latents) -> None:
        """diffusers' older `callback(step, timestep, latents)`."""
        self.after_step()

    def _report(self) -> None:
        for run_id in self.run_ids:
            if run_id not in self.canceled:
                self.ctx.report_progress(run_id, {"step": min(self.step, self.steps), "steps": self.steps})


def run_grouped(
    ctx: EngineContext,
    batch: list[StageRequest],
    prepare: Callable[[StageRequest], tuple[Hashable, dict[str, Any]]],
    call: Callable[[Group, StepHook | None], list[dict[str, Any]]],
    steps_of: Callable[[Group], int] | None = None,
) -> list[RowResult]:
    """Run each group of compatible rows as one call, groups one after another in arrival order."""
    results: list[RowResult | None] = [None] * len(batch)
    groups: dict[Hashable, Group] = {}
    for i, req in enumerate(batch):
        try:
            key, data = prepare(req)
        except StageError as exc:
            results[i] = exc
            continue
        except (KeyError, ValueError, TypeError) as exc:
            results[i] = FatalStageError(f"bad request for this stage: {exc}")
            continue
        groups.setdefault(key, Group(key)).rows.append(Row(i, req.run_id, data))
    for group in groups.values():
        hook = StepHook(ctx, group.run_ids, steps_of(group)) if steps_of else None
        try:
            if hook:
                hook.start()
            outputs = call(group, hook)
        except Canceled:
            outputs = None
        except StageError as exc:
            outputs = [exc] * len(group.rows)
        except (ValueError, TypeError) as exc:
            # The model refused these params (a size it cannot make...): retrying would not help.
            outputs = [FatalStageError(f"the model rejected the request: {exc}")] * len(group.rows)
        except RuntimeError as exc:
            outputs = [RetryableStageError(f"engine error: {exc}")] * len(group.rows)
        for j, row in enumerate(group.rows):
            if outputs is None or (hook and row.run_id in hook.canceled):
                results[row.index] = FatalStageError("canceled")
            else:
                results[row.index] = outputs[j]
    return results
