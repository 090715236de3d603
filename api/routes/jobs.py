"""/v1/jobs: submit (optionally waiting), read, list, cancel, follow."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.auth import owner_scope
from api.follow import RETRY_MS, FollowerDep, prefer_wait
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
from api.schemas import ErrorResponse, JobCreate, JobList, JobPublic, job_public, job_summary, within_budget
from omnijobs.cancel import cancel_job
from omnijobs.store.records import JobView
from omnijobs.streaming.follow import FINAL
from omnijobs.pipelines.spec import NAME_PATTERN
from omnijobs.submission import check_metadata
from omnijobs.submit import submit

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {c: {"model": ErrorResponse} for c in (400, 401, 404, 409, 413, 422)}
# 429 + Retry-After: the key is over its rate, or a first stage's queue is over its bound.
SUBMIT_ERRORS = {**ERRORS, 429: {"model": ErrorResponse}}
StatusFilter = Literal["queued", "running", "succeeded", "failed", "canceled"]


@router.post("", status_code=202, response_model=JobPublic,
             responses={**SUBMIT_ERRORS, 200: {"model": JobPublic, "description": "finished within `Prefer: wait`"}})
async def create_job(
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
    follower: FollowerDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    prefer: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    """202 with the queued job; with `Prefer: wait=N`, 200 with the finished job if it ends within N s."""
    check_metadata(body.metadata, settings.metadata_max_bytes)
    await run_in_threadpool(admission.check, principal.id, registry.get(body.pipeline))
    job, created = await run_in_threadpool(lambda: submit(
        store, registry, publisher, pipeline=body.pipeline, inputs=body.inputs, params=body.params,
        priority=body.priority, metadata=body.metadata, idempotency_key=idempotency_key, media=media,
        webhook=body.webhook, webhook_events_filter=body.webhook_events_filter,
        allowed_hosts=settings.private_hosts_allowed, owner=principal.id,
    ))
    response.headers["Location"] = f"{base_url}/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    wait_s = prefer_wait(prefer)
    if wait_s is not None:
        wait_s = min(wait_s, settings.prefer_wait_max_s)
        response.headers["Preference-Applied"] = f"wait={wait_s:g}"
        job = await follower.wait(str(job.id), wait_s)
        if job.status in FINAL:
            response.status_code = 200
    return job_public(job, base_url)


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(
    store: StoreDep,
    base_url: BaseUrlDep,
    principal: PrincipalDep,
    status: StatusFilter | None = None,
    pipeline: Annotated[str | None, Query(max_length=64, pattern=NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:
    """Newest first, as summaries (inputs, params and outputs are at each job's `urls.get`)."""
    jobs, next_cursor = store.list_summaries(owner=owner_scope(principal), status=status, pipeline=pipeline,
                                             limit=limit, cursor=cursor)
    data = [job_summary(j, base_url) for j in jobs]
    if (fit := within_budget(data)) < len(data):
        data, next_cursor = data[:fit], store.cursor_after(jobs[fit - 1])
    return JobList(data=data, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def get_job(job_id: str, store: StoreDep, base_url: BaseUrlDep, principal: PrincipalDep) -> JobPublic:
    return job_public(store.get_job(job_id, owner=owner_scope(principal)), base_url)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS)
def cancel(job_id: str, store: StoreDep, values: ValuesDep, base_url: BaseUrlDep, principal: PrincipalDep
           ) -> JobPublic:
    return job_public(cancel_job(store, values, job_id, owner=owner_scope(principal)), base_url)


async def _owned_job(job_id: str, store: StoreDep, principal: PrincipalDep):
    # Read before the stream starts, so an unknown (or another key's) job is a plain 404.
    return await run_in_threadpool(store.get_job, job_id, owner_scope(principal))


@router.get("/{job_id}/events", responses=ERRORS, response_class=EventSourceResponse)
async def job_events(
    job: Annotated[JobView, Depends(_owned_job)],
    follower: FollowerDep,
    base_url: BaseUrlDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> AsyncIterable[ServerSentEvent]:
    """Server-Sent Events: `status` when the job changes state, `stage` when a stage does, `delta`
    as a stage generates (text and token ids), then `end` with the job.

    Each event's `id` is its position on the job's channel: reconnect with `Last-Event-ID` to get
    the deltas after it (and the current state again). Idle streams carry keep-alive comments.
    """
    retry: int | None = RETRY_MS
    async for event in follower.follow(str(job.id), after=last_event_id):
        data = job_public(event.job, base_url).model_dump(mode="json") if event.type == "end" else event.data
        yield ServerSentEvent(event=event.type, data=data, id=event.id, retry=retry)
        retry = None
