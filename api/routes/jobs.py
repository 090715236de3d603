"""/v1/jobs: submit, read, list, cancel, follow."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.auth import owner_scope
from api.deps import (
    AdmissionDep,
    BaseUrlDep,
    MediaDep,
    PrincipalDep,
    PublisherDep,
    RegistryDep,
    SettingsDep,
    StoreDep,
    ValuesDep,
)
from api.schemas import ErrorResponse, JobCreate, JobList, JobPublic, job_public
from omnijobs.cancel import cancel_job
from omnijobs.submit import submit

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 404, 409, 413, 422)}
# 429 + Retry-After: the key is over its rate, or a first stage's queue is over its bound.
SUBMIT_ERRORS = {**ERRORS, 429: {"model": ErrorResponse}}
StatusFilter = Literal["queued", "running", "succeeded", "failed", "canceled"]


@router.post("", status_code=202, response_model=JobPublic, responses=SUBMIT_ERRORS)
def create_job(
    body: JobCreate,
    response: Response,
    store: StoreDep,
    registry: RegistryDep,
    publisher: PublisherDep,
    base_url: BaseUrlDep,
    settings: SettingsDep,
    media: MediaDep,
    principal: PrincipalDep,
    admission: AdmissionDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    admission.check(principal.id, registry.get(body.pipeline))
    job, created = submit(
        store, registry, publisher, pipeline=body.pipeline, inputs=body.inputs, params=body.params,
        priority=body.priority, metadata=body.metadata, idempotency_key=idempotency_key, media=media,
        webhook=body.webhook, webhook_events_filter=body.webhook_events_filter,
        allowed_hosts=settings.private_hosts_allowed, owner=principal.id,
    )
    response.headers["Location"] = f"{base_url}/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_public(job, base_url)


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(
    store: StoreDep,
    base_url: BaseUrlDep,
    principal: PrincipalDep,
    status: StatusFilter | None = None,
    pipeline: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:
    jobs, next_cursor = store.list_jobs(owner=owner_scope(principal), status=status, pipeline=pipeline, limit=limit,
                                        cursor=cursor)
    return JobList(data=[job_public(j, base_url) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def get_job(job_id: str, store: StoreDep, base_url: BaseUrlDep, principal: PrincipalDep) -> JobPublic:
    return job_public(store.get_job(job_id, owner=owner_scope(principal)), base_url)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS)
def cancel(job_id: str, store: StoreDep, values: ValuesDep, base_url: BaseUrlDep, principal: PrincipalDep
           ) -> JobPublic:
    return job_public(cancel_job(store, values, job_id, owner=owner_scope(principal)), base_url)


@router.get("/{job_id}/events", responses=ERRORS, response_class=StreamingResponse)
async def job_events(job_id: str, store: StoreDep, base_url: BaseUrlDep, principal: PrincipalDep
                     ) -> StreamingResponse:
    """Server-Sent Events: `status` when the job changes state, `stage` when a stage does, then `end`."""
    first = await run_in_threadpool(store.get_job, job_id, owner_scope(principal))  # 404 before the stream starts

    async def stream():
        job, seen_status, seen_stages = first, None, {}
        while True:
            if job.status != seen_status:
                seen_status = job.status
                yield _sse("status", {"id": str(job.id), "status": job.status})
            for run in job.stages:
                state = (run.status, json.dumps(run.progress, sort_keys=True))
                if seen_stages.get(run.stage) != state:
                    seen_stages[run.stage] = state
                    yield _sse("stage", {"stage": run.stage, "status": run.status, "progress": run.progress})
            if job.status in ("succeeded", "failed", "canceled"):
                yield _sse("end", job_public(job, base_url).model_dump(mode="json"))
                return
            await asyncio.sleep(0.5)
            job = await run_in_threadpool(store.get_job, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"
