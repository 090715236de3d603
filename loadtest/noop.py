"""A stage engine that does nothing, so a benchmark of it measures only the stage machinery."""

from __future__ import annotations

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.kinds import EngineKind

# Used in pipeline files as `engine: loadtest.noop:NOOP` (a user's kind, imported by the worker).
NOOP = EngineKind(
    name="noop",
    impl="loadtest.noop:NoopEngine",
    extra="",
    inputs={"prompt": "text"},
    outputs={"text": "text"},
)


class NoopEngine(Engine):
    def load(self) -> None:
        return None

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        return [{"text": req.inputs["prompt"]} for req in batch]
