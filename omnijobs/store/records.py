"""Frozen views of rows, handed out by the store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RunView:
    id: uuid.UUID
    stage: str
    status: str
    attempt: int
    max_attempts: int
    params: dict
    inputs: dict | None
    outputs: dict | None
    error: dict | None
    errors: list
    progress: dict | None
    worker: str | None
    batch_id: str | None
    batch_size: int | None
    created_at: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    lease_until: datetime | None


@dataclass(frozen=True)
class JobView:
    id: uuid.UUID
    pipeline: str
    status: str
    owner: str | None
    priority: int
    inputs: dict
    params: dict
    metadata: dict
    outputs: dict | None
    error: dict | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stages: list[RunView] = field(default_factory=list)


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker now holds: everything the engine needs, read in the claim transaction."""

    id: uuid.UUID
    job_id: uuid.UUID
    stage: str
    attempt: int
    max_attempts: int
    params: dict[str, Any]
    inputs: dict[str, Any]
    # Seconds from its publish to this claim (None when it was never marked published).
    queued_s: float | None = None


@dataclass(frozen=True)
class RunSummary:
    """A stage run as a list shows it: state and timing, its failed attempts, never its values."""

    stage: str
    status: str
    attempt: int
    max_attempts: int
    errors: list
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class JobSummary:
    """A job as a list shows it: inputs, outputs and params stay in the row (read them with get_job)."""

    id: uuid.UUID
    pipeline: str
    status: str
    owner: str | None
    priority: int
    metadata: dict
    error: dict | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stages: list[RunSummary] = field(default_factory=list)
