"""Request and response shapes, separate from the tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omnijobs.artifacts.refs import is_ref
from omnijobs.store.records import JobSummary, JobView, RunSummary, RunView


class JobCreate(BaseModel):
    # The example is a job that runs: docs show it, and the API fuzz test submits it.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"pipeline": "chat", "inputs": {"prompt": "Hello"}, "params": {"max_tokens": 8}}]})

    pipeline: str = Field(min_length=1, max_length=64)
    inputs: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] | None = None
    priority: int = Field(default=0, ge=0, le=9, description="0 (default) to 9 (most urgent)")
    metadata: dict[str, Any] | None = None
    webhook: str | None = Field(default=None, max_length=2048, description="http(s) URL to POST signed events to")
    webhook_events_filter: list[str] | None = Field(
        default=None, description="job.succeeded, job.failed, job.canceled (the default), job.started, "
                                  "job.stage_completed")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class StagePublic(BaseModel):
    id: str
    name: str
    status: str
    attempt: int
    max_attempts: int
    params: dict[str, Any]
    inputs: dict[str, Any] | None
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    errors: list[dict[str, Any]]
    progress: dict[str, Any] | None
    worker: str | None
    batch_id: str | None
    batch_size: int | None
    created_at: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    queue_wait_s: float | None
    run_s: float | None


class JobUrls(BaseModel):
    get: str
    cancel: str
    events: str


class JobPublic(BaseModel):
    id: str
    pipeline: str
    status: str
    priority: int
    inputs: dict[str, Any]
    params: dict[str, Any]
    metadata: dict[str, Any]
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    stages: list[StagePublic]
    progress: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    urls: JobUrls


class StageSummaryPublic(BaseModel):
    name: str
    status: str
    attempt: int
    max_attempts: int
    errors: list[dict[str, Any]] = Field(description="failed attempts; long messages end in a truncation marker")
    started_at: datetime | None
    finished_at: datetime | None


class JobSummaryPublic(BaseModel):
    """A job in a list. Its inputs, params and outputs are not listed: read them at `urls.get`."""

    id: str
    pipeline: str
    status: str
    priority: int
    metadata: dict[str, Any]
    error: dict[str, Any] | None = Field(description="long messages end in a truncation marker")
    stages: list[StageSummaryPublic]
    progress: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    urls: JobUrls


class JobList(BaseModel):
    data: list[JobSummaryPublic]
    next_cursor: str | None = Field(description="set when there are more jobs; a page may end early to stay "
                                                "within its byte budget")


def _public_values(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """Stored artifacts are shown by kind and size; their location is the service's business."""
    if values is None:
        return None
    return {k: {f: v[f] for f in ("type", "content_type", "bytes") if f in v} if is_ref(v) else v
            for k, v in values.items()}


def _public_outputs(outputs: dict[str, Any] | None, job_url: str) -> dict[str, Any] | None:
    """A job's file outputs as download links: {url, content_type, bytes}."""
    if outputs is None:
        return None
    shown = {}
    for name, value in outputs.items():
        if is_ref(value):
            shown[name] = {"url": f"{job_url}/outputs/{name}", "type": value.get("type"),
                           "content_type": value.get("content_type"), "bytes": value.get("bytes"),
                           **({"expired": True} if value.get("expired") else {})}
        else:
            shown[name] = value
    return shown


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds(), 4) if a and b else None


def stage_public(r: RunView) -> StagePublic:
    return StagePublic(
        id=str(r.id), name=r.stage, status=r.status, attempt=r.attempt, max_attempts=r.max_attempts, params=r.params,
        inputs=_public_values(r.inputs), outputs=_public_values(r.outputs), error=r.error, errors=r.errors, progress=r.progress,
        worker=r.worker, batch_id=r.batch_id, batch_size=r.batch_size, created_at=r.created_at,
        enqueued_at=r.enqueued_at, started_at=r.started_at, finished_at=r.finished_at,
        queue_wait_s=_seconds(r.enqueued_at or r.created_at, r.started_at), run_s=_seconds(r.started_at, r.finished_at),
    )


def job_public(job: JobView, base_url: str) -> JobPublic:
    stages = [stage_public(r) for r in job.stages]
    done = sum(1 for s in stages if s.status in ("succeeded", "skipped"))
    url = f"{base_url}/v1/jobs/{job.id}"
    return JobPublic(
        id=str(job.id), pipeline=job.pipeline, status=job.status, priority=job.priority,
        inputs=_public_values(job.inputs), params=job.params, metadata=job.metadata,
        outputs=_public_outputs(job.outputs, url), error=job.error, stages=stages,
        progress={"stages_done": done, "stages_total": len(stages),
                  "fraction": round(done / len(stages), 4) if stages else 0.0},
        metrics={
            "total_s": _seconds(job.created_at, job.finished_at),
            "queue_wait_s": _seconds(job.created_at, job.started_at),
            "stages": {s.name: {"queue_wait_s": s.queue_wait_s, "run_s": s.run_s, "batch_size": s.batch_size}
                       for s in stages},
        },
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        urls=JobUrls(get=url, cancel=f"{url}/cancel", events=f"{url}/events"),
    )


# A list page stops early (with a cursor) once its items pass this many bytes of JSON, so a page of
# 100 jobs stays small whatever their metadata and errors hold.
LIST_PAGE_MAX_BYTES = 1024 * 1024
# Strings in a listed error longer than this are cut, with TRUNCATED at the end.
LIST_TEXT_MAX_CHARS = 2048
TRUNCATED = "… [truncated: the job's own URL has it whole]"


def clip(value: Any, limit: int = LIST_TEXT_MAX_CHARS) -> Any:
    """`value` with every string longer than `limit` cut and marked (lists show errors, not essays)."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + TRUNCATED
    if isinstance(value, dict):
        return {k: clip(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [clip(v, limit) for v in value]
    return value


def _stage_summary(r: RunSummary) -> StageSummaryPublic:
    return StageSummaryPublic(name=r.stage, status=r.status, attempt=r.attempt, max_attempts=r.max_attempts,
                              errors=clip(r.errors or []), started_at=r.started_at, finished_at=r.finished_at)


def job_summary(job: JobSummary, base_url: str) -> JobSummaryPublic:
    done = sum(1 for s in job.stages if s.status in ("succeeded", "skipped"))
    total = len(job.stages)
    url = f"{base_url}/v1/jobs/{job.id}"
    return JobSummaryPublic(
        id=str(job.id), pipeline=job.pipeline, status=job.status, priority=job.priority, metadata=job.metadata,
        error=clip(job.error), stages=[_stage_summary(r) for r in job.stages],
        progress={"stages_done": done, "stages_total": total, "fraction": round(done / total, 4) if total else 0.0},
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        urls=JobUrls(get=url, cancel=f"{url}/cancel", events=f"{url}/events"),
    )


def within_budget(items: list[BaseModel], max_bytes: int = LIST_PAGE_MAX_BYTES) -> int:
    """How many of `items` fit in `max_bytes` of JSON (at least one, so paging always moves on)."""
    used = 0
    for n, item in enumerate(items):
        used += len(item.model_dump_json())
        if used > max_bytes and n > 0:
            return n
    return len(items)
