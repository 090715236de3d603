"""/admin: the dashboard and its API (admin keys only)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

from api.admin_schemas import (
    FailedJob,
    FailedJobList,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPublic,
    QueueList,
    QueueStat,
    Stats,
    WebhookSecretRotated,
    WorkerList,
    key_public,
    worker_public,
)
from api.auth import require_admin, security_headers
from api.deps import (
    AdminDep,
    BaseUrlDep,
    PublisherDep,
    SettingsDep,
    StoreDep,
    ValuesDep,
)
from api.schemas import ErrorResponse, JobPublic, clip, job_public, within_budget
from omnijobs.cancel import cancel_job
from omnijobs.pipelines.spec import NAME_PATTERN
from omnijobs.errors import Conflict, NotFound
from omnijobs.monitor import queue_overview
from omnijobs.store.failures import attempts, retry_job

STATIC = Path(__file__).resolve().parent.parent / "static"
# Served files, by name: nothing else under static/ is reachable.
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "admin-common.js": "text/javascript",
    "job.js": "text/javascript",
}
ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 403, 404, 409, 422)}

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=ERRORS)


@router.get("", response_class=HTMLResponse)
def dashboard() -> HTMLResponse:
    """The dashboard: queues, workers, stats and failed jobs, refreshing itself."""
    return HTMLResponse((STATIC / "dashboard.html").read_text(), headers=security_headers())


@router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def job_page(job_id: Annotated[str, PathParam(max_length=64)]) -> HTMLResponse:
    """One job: its stages, outputs and every failed attempt, with retry and cancel buttons."""
    return HTMLResponse((STATIC / "job.html").read_text(), headers=security_headers())


@router.get("/static/{name}", include_in_schema=False)
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no asset '{name}'", field="name")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=300"})


@router.get("/api/queues", response_model=QueueList)
def queues(request: Request, settings: SettingsDep) -> QueueList:
    state = request.app.state
    workers = state.workers.list(settings.worker_dead_after_s)
    return QueueList(data=[QueueStat(**q) for q in queue_overview(state.registry, state.admission, state.monitor,
                                                                   workers)])


@router.get("/api/workers", response_model=WorkerList)
def workers(request: Request, settings: SettingsDep) -> WorkerList:
    now = datetime.now(UTC)
    found = request.app.state.workers.list(settings.worker_dead_after_s)
    return WorkerList(data=[worker_public(w, now) for w in found], dead_after_s=settings.worker_dead_after_s)


@router.get("/api/stats", response_model=Stats)
def stats(
    request: Request,
    window_s: Annotated[float, Query(gt=0, le=30 * 86400, description="look back this many seconds")] = 900,
    bucket_s: Annotated[float | None, Query(gt=0, le=86400, description="series resolution")] = None,
) -> Stats:
    if bucket_s is not None:
        bucket_s = max(bucket_s, window_s / 1000)  # at most 1000 points per series
    return Stats(**request.app.state.stats.window(window_s, bucket_s))


@router.get("/api/jobs", response_model=FailedJobList)
def failed_jobs(
    store: StoreDep,
    status: Literal["failed", "canceled"] = "failed",
    pipeline: Annotated[str | None, Query(max_length=64, pattern=NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> FailedJobList:
    """Failed (dead-lettered) or canceled jobs of every key, newest first, with every attempt's error."""
    jobs, next_cursor = store.list_summaries(status=status, pipeline=pipeline, limit=limit, cursor=cursor)
    data = [_failed(j, clip) for j in jobs]
    if (fit := within_budget(data)) < len(data):
        data, next_cursor = data[:fit], store.cursor_after(jobs[fit - 1])
    return FailedJobList(data=data, next_cursor=next_cursor)


@router.get("/api/jobs/{job_id}", response_model=FailedJob)
def inspect_job(job_id: str, store: StoreDep) -> FailedJob:
    return _failed(store.get_job(job_id))


@router.post("/api/jobs/{job_id}/retry", response_model=JobPublic)
def retry(job_id: str, store: StoreDep, publisher: PublisherDep, base_url: BaseUrlDep) -> JobPublic:
    """Queue a failed job again: finished stages are kept, the failed one gets a fresh budget of attempts."""
    return job_public(retry_job(store, publisher, job_id), base_url)


@router.post("/api/jobs/{job_id}/cancel", response_model=JobPublic)
def cancel(job_id: str, store: StoreDep, values: ValuesDep, base_url: BaseUrlDep) -> JobPublic:
    return job_public(cancel_job(store, values, job_id), base_url)


@router.get("/api/keys", response_model=KeyList)
def list_keys(request: Request) -> KeyList:
    return KeyList(data=[key_public(k) for k in request.app.state.keys.list()])


@router.post("/api/keys", response_model=KeyCreated, status_code=201)
def create_key(body: KeyCreate, request: Request) -> KeyCreated:
    new = request.app.state.keys.create(body.name, admin=body.admin)
    return KeyCreated(**key_public(new.info).model_dump(), key=new.key, webhook_secret=new.webhook_secret)


@router.post("/api/keys/{key_id}/revoke", response_model=KeyPublic)
def revoke_key(key_id: str, request: Request, principal: AdminDep) -> KeyPublic:
    if key_id == principal.id:  # an admin locking itself out is a mistake, not a request
        raise Conflict("a key cannot revoke itself; revoke it with another admin key or `omnijobs keys revoke`",
                       field="key_id")
    return key_public(request.app.state.keys.revoke(key_id))


@router.post("/api/keys/{key_id}/rotate-webhook-secret", response_model=WebhookSecretRotated)
def rotate_webhook_secret(key_id: str, request: Request, settings: SettingsDep) -> WebhookSecretRotated:
    grace = settings.webhook_secret_grace_s
    secret = request.app.state.keys.rotate_webhook_secret(key_id, grace_s=grace)
    return WebhookSecretRotated(id=key_id, webhook_secret=secret, previous_valid_for_s=grace)


def _failed(job, shown=lambda v: v) -> FailedJob:
    return FailedJob(id=str(job.id), pipeline=job.pipeline, status=job.status, owner=job.owner,
                     error=shown(job.error), created_at=job.created_at, finished_at=job.finished_at,
                     attempts=shown(attempts(job)))
