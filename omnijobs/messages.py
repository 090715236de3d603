"""The only message on the stage queues: which run, and which attempt the sender expects.

It carries ids, never data: inputs are read from the store when the run is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE_TASK = "omnijobs.run_stage"


@dataclass(frozen=True)
class StageTask:
    run_id: str
    attempt: int
    queue: str
    priority: int = 0
    # Seconds to hold the message before delivery (retry backoff).
    delay_s: float = 0.0

    def args(self) -> list:
        return [self.run_id, self.attempt]
