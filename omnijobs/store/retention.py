"""Rows of retention: which finished jobs are past it, their artifact references, and the mark
that their outputs are gone (the job rows themselves stay)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Engine, select

from omnijobs.artifacts.refs import is_ref, refs_in
from omnijobs.inputs import UPLOAD_REF_KEY
from omnijobs.store.db import make_sessions
from omnijobs.store.states import FINAL_JOB
from omnijobs.store.tables import Job, StageRun


class RetentionStore:
    def __init__(self, engine: Engine):
        self._sessions = make_sessions(engine)

    def past_retention(self, finished_before: datetime, limit: int) -> list[uuid.UUID]:
        with self._sessions() as s:
            return list(s.scalars(
                select(Job.id)
                .where(Job.finished_at < finished_before, Job.outputs_expired_at.is_(None),
                       Job.status.in_([str(x) for x in FINAL_JOB]))
                .order_by(Job.finished_at).limit(limit)
            ))

    def artifact_refs(self, job_id: uuid.UUID) -> list[dict]:
        """Every reference a job's rows hold: stage inputs and outputs, and the job's outputs."""
        with self._sessions() as s:
            outputs = s.scalar(select(Job.outputs).where(Job.id == job_id))
            runs = s.execute(select(StageRun.inputs, StageRun.outputs).where(StageRun.job_id == job_id)).all()
        refs = {r["artifact"]: r for r in refs_in(outputs)}
        for run in runs:
            refs |= {r["artifact"]: r for r in [*refs_in(run.inputs), *refs_in(run.outputs)]}
        # An upload ("file": <id>) may be named by other jobs too: it has its own lifetime.
        return [r for r in refs.values() if UPLOAD_REF_KEY not in r]

    def mark_expired(self, job_id: uuid.UUID, now: datetime) -> None:
        """Note the deletion on the job and on each reference, so readers answer 410, not 500."""
        with self._sessions.begin() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.outputs_expired_at is not None:
                return
            job.outputs_expired_at = now
            job.outputs = _expire(job.outputs, now)
            for run in s.scalars(select(StageRun).where(StageRun.job_id == job_id)):
                run.inputs, run.outputs = _expire(run.inputs, now), _expire(run.outputs, now)

    def expired_at(self, job_id: uuid.UUID | str) -> datetime | None:
        """When the job's artifacts were deleted (None: still kept). For the outputs route."""
        with self._sessions() as s:
            return s.scalar(select(Job.outputs_expired_at).where(Job.id == uuid.UUID(str(job_id))))


def _expire(values: dict | None, now: datetime) -> dict | None:
    if values is None:
        return None
    return {k: {**v, "expired": True, "expired_at": now.isoformat()} if is_ref(v) and UPLOAD_REF_KEY not in v else v
            for k, v in values.items()}
