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
    # The job the run belongs to: per-job channels (token deltas, stream chunks) are keyed by it.
    job_id: str = ""


@dataclass(frozen=True)
class Media:
    """An encoded image, audio clip or video (PNG, WAV, MP4...) on an image/audio/video port.

    Engines receive one for each such input port and return one for each such output port; the
    runner moves the bytes through the configured connector. Ports typed `tensor` carry a
    `dict[str, torch.Tensor]` (a named bundle, serialised with safetensors) instead.
    """

    data: bytes
    content_type: str


# A per-row result: the outputs by port, or the exception that failed only this row.
RowResult = dict[str, Any] | BaseException


def _no_progress(run_id: str, progress: dict[str, Any]) -> None:
    return None


def _no_deltas(rows: list[tuple[StageRequest, dict[str, Any]]]) -> None:
    return None


@dataclass(frozen=True)
class EngineContext:
    stage: StageSpec
    device: str
    model_path: Path
    # Asked between steps of long generations; True means stop this row early (job canceled).
    should_stop: Callable[[str], bool] = lambda run_id: False
    # Called with e.g. {"step": 3, "steps": 20}; shown in the job's stage while the batch runs.
    report_progress: Callable[[str, dict[str, Any]], None] = _no_progress
    # Called once per generation step with one (request, delta) pair per row that produced output,
    # e.g. {"text": " wor", "token_ids": [1917]}: published on the job's event channel. A row's
    # deltas join to the text its result carries.
    emit_delta: Callable[[list[tuple[StageRequest, dict[str, Any]]]], None] = _no_deltas
    # The chunk transport of streamed edges (omnijobs.streaming.chunks.ChunkStreams); None without
    # Redis: nothing is streamed, and a streamed input can only be read once recorded.
    chunks: Any = None

    def emit_chunk(self, request: StageRequest, port: str, payload: Any, final: bool = False) -> None:
        """Hand one chunk of a row's output on `port` to the stage streaming from it (if any)."""
        if self.chunks is not None:
            self.chunks.emit(request, port, payload, final)


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
