"""The engine interface every engine kind implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnijobs.pipelines.spec import StageSpec


@dataclass(frozen=True)
class StageRequest:
    """One row of a batch: the values on the stage's input ports and the job's effective params."""

    run_id: str
    inputs: dict[str, Any]
    params: dict[str, Any]


# A per-row result: the outputs by port, or the exception that failed only this row.
RowResult = dict[str, Any] | BaseException


@dataclass(frozen=True)
class EngineContext:
    stage: StageSpec
    device: str
    model_path: Path
    # Asked between steps of long generations; True means stop this row early (job canceled).
    should_stop: Callable[[str], bool] = lambda run_id: False


class Engine(ABC):
    """Loaded once per worker process; then runs batches until the worker stops."""

    def __init__(self, ctx: EngineContext):
        self.ctx = ctx

    @abstractmethod
    def load(self) -> None:
        """Load weights onto the device. Raise if the model is missing or incomplete."""

    @abstractmethod
    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        """Run the whole batch as one engine call; return one result per request, in order.

        Raise to fail every row (the orchestrator retries them); return an exception in a row's
        place to fail that row alone.
        """
