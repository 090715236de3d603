"""Failed and dead-lettered jobs: every attempt's error, and retrying a failed job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from omnijobs import orchestrator
from omnijobs.dispatch import Publisher, dispatch
from omnijobs.errors import Conflict, NotFound
from omnijobs.messages import StageTask
from omnijobs.store.db import make_sessions
from omnijobs.store.jobs import JobStore
from omnijobs.store.records import JobView
from omnijobs.store.states import JobStatus, RunStatus
from omnijobs.store.tables import Job, StageRun


def attempts(job: JobView) -> list[dict[str, Any]]:
    """Every failed attempt of every stage of a job, oldest first."""
    out = [{"stage": run.stage, **entry} for run in job.stages for entry in (run.errors or [])]
    return sorted(out, key=lambda e: str(e.get("at", "")))


def retry_job(store: JobStore, publisher: Publisher, job_id: str) -> JobView:
    """Put a failed job back in the queue: stages that succeeded keep their outputs, the failed stage
    gets a fresh budget of attempts, the stages after it wait again."""
    try:
        jid = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"no job '{job_id}'", field="id") from None
    now = datetime.now(UTC)
    sessions = make_sessions(store.engine)
    with sessions.begin() as s:
        job = s.get(Job, jid, with_for_update=True)
        if job is None:
            raise NotFound(f"no job '{job_id}'", field="id")
        if job.status != JobStatus.FAILED:
            raise Conflict(f"only failed jobs can be retried; this one is {job.status}", field="status")
        spec = store.pipelines.get(job.pipeline)
        runs = {r.stage: r for r in s.scalars(select(StageRun).where(StageRun.job_id == jid))}
        for run in runs.values():
            if run.status in (RunStatus.FAILED, RunStatus.CANCELED):
                if run.status == RunStatus.FAILED:
                    # The attempt counter keeps counting (messages name it); the budget starts afresh.
                    run.max_attempts = run.attempt + spec.stages[run.stage].max_attempts
                run.status, run.error, run.finished_at, run.lease_until = RunStatus.WAITING, None, None, None
                run.started_at, run.enqueued_at, run.updated_at = None, None, now
        statuses = {name: RunStatus(r.status) for name, r in runs.items()}
        tasks = []
        for name in orchestrator.newly_ready(spec, statuses):
            runs[name].status = RunStatus.QUEUED
            tasks.append(StageTask(str(runs[name].id), runs[name].attempt, runs[name].queue, job.priority))
        job.status, job.error, job.outputs, job.finished_at, job.updated_at = JobStatus.QUEUED, None, None, None, now
    dispatch(store, publisher, tasks)
    return store.get_job(jid)
