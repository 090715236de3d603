"""Shapes of the admin API (queues, workers, stats, failed jobs, keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from omnijobs.store.keys import KeyInfo
from omnijobs.store.workers import WorkerView


class QueueStat(BaseModel):
    stage: str
    pipeline: str
    queue: str
    depth: int | None = Field(description="messages waiting in the broker; null when the broker is not Redis")
    depth_by_priority: dict[str, int]
    bound: int | None
    queued: int
    running: int
    oldest_wait_s: float | None
    workers: int
    worker_names: list[str]


class QueueList(BaseModel):
    data: list[QueueStat]


class WorkerPublic(BaseModel):
    name: str
    host: str
    pid: int
    stage: str
    queue: str
    device: str
    engine: str
    model: str | None
    started_at: datetime
    last_heartbeat: datetime
    heartbeat_age_s: float
    stopped_at: datetime | None
    batch_size: int
    batches: int
    jobs_done: int
    failures: int
    state: str = Field(description="alive, dead (no heartbeat for dead_after_s) or stopped")
    alive: bool


class WorkerList(BaseModel):
    data: list[WorkerPublic]
    dead_after_s: float


def worker_public(w: WorkerView, now: datetime) -> WorkerPublic:
    return WorkerPublic(
        name=w.name, host=w.host, pid=w.pid, stage=w.stage, queue=w.queue, device=w.device, engine=w.engine,
        model=w.model, started_at=w.started_at, last_heartbeat=w.last_heartbeat,
        heartbeat_age_s=round((now - w.last_heartbeat).total_seconds(), 3), stopped_at=w.stopped_at,
        batch_size=w.batch_size, batches=w.batches, jobs_done=w.jobs_done, failures=w.failures, state=w.state,
        alive=w.alive,
    )


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class StageStats(BaseModel):
    runs: int
    succeeded: int
    failed: int
    canceled: int
    retries: int
    throughput_per_s: float
    batches: int
    batch_sizes: dict[str, int] = Field(description="batch size -> number of batches")
    mean_batch_size: float | None
    queue_wait_s: Percentiles
    run_s: Percentiles
    series: list[int] = Field(description="succeeded runs per bucket_s, oldest first")


class PipelineStats(BaseModel):
    finished: int
    succeeded: int
    failed: int
    canceled: int
    queued: int
    running: int
    throughput_per_s: float
    queue_wait_s: Percentiles
    total_s: Percentiles


class Stats(BaseModel):
    window_s: float
    bucket_s: float
    since: datetime
    now: datetime
    stages: dict[str, StageStats]
    pipelines: dict[str, PipelineStats]


class FailedJob(BaseModel):
    id: str
    pipeline: str
    status: str
    owner: str | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None
    attempts: list[dict[str, Any]] = Field(description="every failed attempt: stage, attempt, code, message, worker, at")


class FailedJobList(BaseModel):
    data: list[FailedJob]
    next_cursor: str | None


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"\S")
    admin: StrictBool = False  # who becomes an admin is said with true, never with 1 or "yes"

    @field_validator("name")
    @classmethod
    def _storable(cls, name: str) -> str:
        # Postgres text holds neither NUL nor lone surrogates: refuse them here, not with a 500.
        if "\x00" in name or any(0xD800 <= ord(c) <= 0xDFFF for c in name):
            raise ValueError("name may not contain NUL (\\u0000) characters or lone UTF-16 surrogates")
        return name


class KeyPublic(BaseModel):
    id: str
    name: str
    admin: bool
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="shown once; only its hash is stored")
    webhook_secret: str = Field(description="whsec_ secret signing this key's webhooks; shown once")


class KeyList(BaseModel):
    data: list[KeyPublic]


class WebhookSecretRotated(BaseModel):
    id: str
    webhook_secret: str
    previous_valid_for_s: float


def key_public(k: KeyInfo) -> KeyPublic:
    return KeyPublic(id=k.id, name=k.name, admin=k.admin, prefix=k.prefix, created_at=k.created_at,
                     revoked_at=k.revoked_at)
