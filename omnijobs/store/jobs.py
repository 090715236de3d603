"""JobStore: every change of a job or stage run goes through here, as a conditional update."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from omnijobs import orchestrator
from omnijobs.artifacts.refs import refs_in
from omnijobs.errors import Conflict, InvalidInput, NotFound
from omnijobs.messages import StageTask
from omnijobs.pipelines import PipelineRegistry
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.store.db import make_sessions
from omnijobs.store.records import ClaimedRun, JobSummary, JobView, RunSummary, RunView
from omnijobs.store.states import FINAL_JOB, JobStatus, RunStatus
from omnijobs.store.tables import Job, StageRun
from omnijobs.store.webhooks import record_event
from omnijobs.submission import effective_params


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStore:
    def __init__(self, engine: Engine, pipelines: PipelineRegistry):
        self.engine = engine
        self.pipelines = pipelines
        self._sessions = make_sessions(engine)

    # ---------------------------------------------------------------- submit and read

    def create_job(
        self,
        spec: PipelineSpec,
        inputs: dict[str, Any],
        params: dict[str, dict[str, Any]],
        *,
        priority: int = 0,
        metadata: dict | None = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        job_id: uuid.UUID | None = None,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
    ) -> tuple[JobView, list[StageTask], bool]:
        """Write the job and all its stage runs in one transaction.

        Returns (job, tasks to enqueue, created). With an idempotency key already used for the same
        request, returns the existing job and created=False; for another request, raises Conflict.
        """
        now = utcnow()
        job_id = job_id or uuid.uuid4()  # given when inputs were stored under the job's prefix first
        skipped = orchestrator.skipped_stages(spec, inputs)
        ready = set(orchestrator.initial_ready(spec, skipped))
        tasks = []
        try:
            with self._sessions.begin() as s:
                job = Job(
                    id=job_id, pipeline=spec.name, status=JobStatus.QUEUED, owner=owner, priority=priority,
                    inputs=inputs, params=params, meta=metadata or {}, idempotency_key=idempotency_key,
                    request_hash=request_hash, created_at=now, updated_at=now,
                    webhook=webhook, webhook_events=webhook_events,
                )
                s.add(job)
                s.flush()
                runs = []
                for name, stage in spec.stages.items():
                    # NOTE: a ready run is marked published in the same transaction; if the publish
                    # after the commit fails, `mark_unpublished` clears the mark so the reconciler
                    # republishes it within seconds instead of after the stale-message age.
                    run = StageRun(
                        id=uuid.uuid4(), job_id=job_id, stage=name, queue=spec.queue(name),
                        status=_initial_status(name, ready, skipped), attempt=0,
                        max_attempts=stage.max_attempts, params=effective_params(spec, name, params), errors=[],
                        created_at=now, updated_at=now, enqueued_at=now if name in ready else None,
                    )
                    runs.append(run)
                    if name in ready:
                        tasks.append(StageTask(str(run.id), 0, run.queue, priority))
                s.add_all(runs)
                s.flush()
                # Built from what was written: no second read after the commit.
                view = self._view(s, job, runs)
        except IntegrityError:
            if idempotency_key is None:
                raise
            # Another request with the same key won the race: answer as it was answered.
            existing = self.find_idempotent(owner, idempotency_key, request_hash or "")
            if existing is None:
                raise
            return existing, [], False
        return view, tasks, True

    def find_idempotent(self, owner: str | None, key: str, request_hash: str) -> JobView | None:
        with self._sessions() as s:
            owner_cond = Job.owner.is_(None) if owner is None else Job.owner == owner
            job = s.scalars(select(Job).where(owner_cond, Job.idempotency_key == key)).one_or_none()
            if job is None:
                return None
            if job.request_hash != request_hash:
                raise Conflict("Idempotency-Key was already used with a different request", field="Idempotency-Key")
            return self._view(s, job)

    def get_job(self, job_id: uuid.UUID | str, owner: str | None = None) -> JobView:
        with self._sessions() as s:
            job = s.get(Job, _uuid(job_id))
            if job is None or (owner is not None and job.owner != owner):
                raise NotFound(f"no job '{job_id}'", field="id")
            return self._view(s, job)

    def list_jobs(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        pipeline: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[JobView], str | None]:
        """Newest first. The cursor is opaque to clients: (created_at, id) of the last row seen."""
        q = self._list_query(select(Job), owner, status, pipeline, limit, cursor)
        with self._sessions() as s:
            jobs = list(s.scalars(q))
            runs: dict[uuid.UUID, list[StageRun]] = {j.id: [] for j in jobs[:limit]}
            for run in s.scalars(select(StageRun).where(StageRun.job_id.in_(list(runs)))):  # one query, not one per job
                runs[run.job_id].append(run)
            page = [self._view(s, j, runs[j.id]) for j in jobs[:limit]]
        next_cursor = _encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
        return page, next_cursor

    def list_summaries(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        pipeline: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[JobSummary], str | None]:
        """`list_jobs` without the values: only the columns a list shows are read, so a page of jobs
        with megabytes of inputs or outputs each costs what a page of small ones does."""
        q = self._list_query(select(*(getattr(Job, c) for c in _SUMMARY_JOB)), owner, status, pipeline, limit,
                             cursor)
        with self._sessions() as s:
            jobs = s.execute(q).all()
            runs: dict[uuid.UUID, list[RunSummary]] = {j.id: [] for j in jobs[:limit]}
            run_cols = (StageRun.job_id, *(getattr(StageRun, c) for c in _SUMMARY_RUN))
            for r in s.execute(select(*run_cols).where(StageRun.job_id.in_(list(runs)))):
                runs[r.job_id].append(RunSummary(**{c: getattr(r, c) for c in _SUMMARY_RUN}))
        page = []
        for j in jobs[:limit]:
            order = {name: i for i, name in enumerate(self.pipelines.get(j.pipeline).stages)} \
                if j.pipeline in self.pipelines else {}
            page.append(JobSummary(**{c: getattr(j, c) for c in _SUMMARY_JOB if c != "meta"}, metadata=j.meta,
                                   stages=sorted(runs[j.id], key=lambda r: order.get(r.stage, 0))))
        next_cursor = _encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
        return page, next_cursor

    @staticmethod
    def cursor_after(job: JobView | JobSummary) -> str:
        """The cursor of the page that starts after this job (for a caller that ends a page early)."""
        return _encode_cursor(job)

    @staticmethod
    def _list_query(q, owner: str | None, status: str | None, pipeline: str | None, limit: int, cursor: str | None):
        if owner is not None:
            q = q.where(Job.owner == owner)
        if status:
            q = q.where(Job.status == status)
        if pipeline:
            q = q.where(Job.pipeline == pipeline)
        if cursor:
            at, last_id = _decode_cursor(cursor)
            q = q.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < last_id)))
        return q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)

    # ---------------------------------------------------------------- worker side

    def claim(self, tasks: Iterable[tuple[str, int]], worker: str, batch_id: str, lease_s: float) -> list[ClaimedRun]:
        """`claim_batch` for callers that publish nothing at claim time (no streamed edges)."""
        return self.claim_batch(tasks, worker, batch_id, lease_s)[0]

    def claim_batch(self, tasks: Iterable[tuple[str, int]], worker: str, batch_id: str, lease_s: float
                    ) -> tuple[list[ClaimedRun], list[StageTask]]:
        """Take the runs these messages name, if still queued at the expected attempt; also return
        the tasks of stages that start beside them (fed by a stream from a stage claimed here).

        A duplicate or stale message matches no row and is dropped: that is what makes a
        delivery run at most once per attempt. The whole batch is claimed in one statement.
        """
        now = utcnow()
        wanted = sorted({(_uuid(rid), attempt) for rid, attempt in tasks})
        if not wanted:
            return [], []
        with self._sessions.begin() as s:
            # NOTE: the jobs' rows are locked first, in id order, as every other writer of a job's
            # runs does (complete, fail, cancel, release): claims then never deadlock with them, and
            # a run being changed elsewhere is waited for, never skipped (a skipped run's message
            # would be acknowledged and its run left for the reconciler).
            matching = tuple_(StageRun.id, StageRun.attempt).in_(wanted)
            job_ids = list(s.scalars(
                select(Job.id).where(Job.id.in_(select(StageRun.job_id).where(matching, StageRun.status == RunStatus.QUEUED)))
                .order_by(Job.id).with_for_update()))
            if not job_ids:
                return [], []
            rows = s.execute(
                update(StageRun)
                .where(matching, StageRun.status == RunStatus.QUEUED)
                .values(status=RunStatus.RUNNING, attempt=StageRun.attempt + 1, worker=worker,
                        batch_id=batch_id, batch_size=len(wanted), started_at=now, updated_at=now,
                        lease_until=now + timedelta(seconds=lease_s))
                .returning(StageRun.id, StageRun.job_id, StageRun.stage, StageRun.attempt, StageRun.max_attempts,
                           StageRun.params, StageRun.enqueued_at)
                .execution_options(synchronize_session=False)
            ).all()
            if not rows:
                return [], []
            rows.sort(key=lambda r: r.id)
            if len(rows) != len(wanted):
                s.execute(update(StageRun).where(StageRun.id.in_([r.id for r in rows]))
                          .values(batch_size=len(rows)).execution_options(synchronize_session=False))
            job_ids = sorted({r.job_id for r in rows})
            started = set(s.scalars(
                update(Job)
                .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, started_at=now, updated_at=now)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            ).all())
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(job_ids)))}
            for job_id in started:
                record_event(s, jobs[job_id], "job.started", now)
            fed = sorted({r.job_id for r in rows if self.pipelines.get(jobs[r.job_id].pipeline).stages[r.stage].upstream})
            upstream = self._outputs_of(s, fed)
            result, stored_inputs = [], []
            for r in rows:
                job = jobs[r.job_id]
                spec = self.pipelines.get(job.pipeline)
                inputs = orchestrator.resolve_inputs(spec, r.stage, job.inputs, upstream.get(r.job_id, {}))
                stored_inputs.append({"b_id": r.id, "b_inputs": inputs})
                queued_s = (now - r.enqueued_at).total_seconds() if r.enqueued_at else None
                result.append(ClaimedRun(r.id, r.job_id, r.stage, r.attempt, r.max_attempts, dict(r.params), inputs,
                                         queued_s))
            s.connection().execute(
                update(StageRun.__table__).where(StageRun.__table__.c.id == bindparam("b_id"))
                .values(inputs=bindparam("b_inputs")),
                stored_inputs,
            )
            side = self._start_streamed(s, [jobs[r.job_id] for r in rows
                                            if orchestrator.streams_from(self.pipelines.get(jobs[r.job_id].pipeline), r.stage)], now)
        return result, side

    def _start_streamed(self, s: Session, jobs: list[Job], now: datetime) -> list[StageTask]:
        """Queue the stages fed by a stream from a run that just started."""
        tasks = []
        for job in {j.id: j for j in jobs}.values():
            spec = self.pipelines.get(job.pipeline)
            # The claim above holds the job's row: decisions about one job stay serialised on it.
            runs = {r.stage: r for r in s.scalars(select(StageRun).where(StageRun.job_id == job.id))}
            for name in orchestrator.newly_ready(spec, {n: RunStatus(r.status) for n, r in runs.items()}):
                run = runs[name]
                run.status, run.updated_at, run.enqueued_at = RunStatus.QUEUED, now, now
                tasks.append(StageTask(str(run.id), run.attempt, run.queue, job.priority))
        return tasks

    def renew_leases(self, run_ids: Iterable[uuid.UUID], lease_s: float) -> None:
        now = utcnow()
        with self._sessions.begin() as s:
            s.execute(
                update(StageRun)
                .where(StageRun.id.in_(list(run_ids)), StageRun.status == RunStatus.RUNNING)
                .values(lease_until=now + timedelta(seconds=lease_s))
            )

    def canceled_among(self, run_ids: Iterable[uuid.UUID]) -> set[str]:
        with self._sessions() as s:
            rows = s.scalars(
                select(StageRun.id).where(StageRun.id.in_(list(run_ids)), StageRun.status == RunStatus.CANCELED)
            )
            return {str(r) for r in rows}

    def running_claims(self, run_ids: Iterable[uuid.UUID]) -> list[ClaimedRun]:
        """The runs among these still running, as claims (for failing them from outside the batch)."""
        with self._sessions() as s:
            rows = s.scalars(
                select(StageRun).where(StageRun.id.in_(list(run_ids)), StageRun.status == RunStatus.RUNNING)
            )
            return [ClaimedRun(r.id, r.job_id, r.stage, r.attempt, r.max_attempts, r.params, r.inputs or {})
                    for r in rows]

    def complete(self, run: ClaimedRun, outputs: dict[str, Any]) -> list[StageTask]:
        """Record a run's outputs once; return the tasks of the stages that became ready."""
        now = utcnow()
        with self._sessions.begin() as s:
            job = self._lock_job(s, run.job_id)
            done = s.execute(
                update(StageRun)
                .where(StageRun.id == run.id, StageRun.status == RunStatus.RUNNING, StageRun.attempt == run.attempt)
                .values(status=RunStatus.SUCCEEDED, outputs=json_safe(outputs), finished_at=now, updated_at=now,
                        lease_until=None)
            ).rowcount
            if not done:
                return []  # lease lost or job canceled meanwhile: someone else owns the outcome
            record_event(s, job, "job.stage_completed", now, stage=run.stage)
            return self._advance(s, job, now, {r.stage: r for r in s.scalars(
                select(StageRun).where(StageRun.job_id == job.id))})

    def complete_many(self, done: Sequence[tuple[ClaimedRun, dict[str, Any]]]) -> BatchRecord:
        """Record a batch's outputs in one transaction: each run once, then advance every job it touched.

        Runs whose attempt no longer holds (lease lost, job canceled) are left out of `recorded`.
        The jobs' rows are locked in id order, so two workers finishing runs of the same jobs
        serialise instead of deadlocking.
        """
        now = utcnow()
        record = BatchRecord()
        if not done:
            return record
        with self._sessions.begin() as s:
            job_ids = sorted({run.job_id for run, _ in done})
            jobs = {j.id: j for j in s.scalars(
                select(Job).where(Job.id.in_(job_ids)).order_by(Job.id).with_for_update())}
            runs_by_job: dict[uuid.UUID, dict[str, StageRun]] = {j: {} for j in job_ids}
            rows = {}
            for row in s.scalars(select(StageRun).where(StageRun.job_id.in_(job_ids))):
                runs_by_job[row.job_id][row.stage] = row
                rows[row.id] = row
            touched = []
            for run, outputs in done:
                row = rows.get(run.id)
                if row is None or row.status != RunStatus.RUNNING or row.attempt != run.attempt:
                    continue  # someone else owns the outcome
                row.status, row.outputs, row.finished_at = RunStatus.SUCCEEDED, json_safe(outputs), now
                row.updated_at, row.lease_until = now, None
                record.recorded.add(run.id)
                record_event(s, jobs[run.job_id], "job.stage_completed", now, stage=run.stage)
                if run.job_id not in touched:
                    touched.append(run.job_id)
            s.flush()
            for job_id in touched:
                job = jobs[job_id]
                record.tasks += self._advance(s, job, now, runs_by_job[job_id])
                if JobStatus(job.status) in FINAL_JOB:
                    record.finished[job_id] = _intermediate_refs(job, runs_by_job[job_id].values())
        return record

    def fail(self, run: ClaimedRun, error: dict, retry: bool, delay_s: float = 0.0, worker: str | None = None
             ) -> list[StageTask]:
        """Record a failed attempt; queue it again or fail the job. Returns tasks to enqueue."""
        now = utcnow()
        with self._sessions.begin() as s:
            job = self._lock_job(s, run.job_id)
            row = s.get(StageRun, run.id)
            if row.status != RunStatus.RUNNING or row.attempt != run.attempt:
                return []
            return self._record_failure(s, job, row, error, retry and row.attempt < row.max_attempts,
                                        delay_s, worker, now)

    def mark_enqueued(self, tasks: Iterable[StageTask]) -> None:
        ids = [_uuid(t.run_id) for t in tasks]
        if ids:
            with self._sessions.begin() as s:
                s.execute(update(StageRun).where(StageRun.id.in_(ids)).values(enqueued_at=utcnow()))

    def mark_unpublished(self, tasks: Iterable[StageTask]) -> None:
        """The publish after a commit failed: clear the mark so the reconciler republishes soon."""
        ids = [_uuid(t.run_id) for t in tasks]
        if ids:
            with self._sessions.begin() as s:
                s.execute(update(StageRun).where(StageRun.id.in_(ids), StageRun.status == RunStatus.QUEUED)
                          .values(enqueued_at=None))

    def succeeded_attempt(self, run: ClaimedRun) -> bool:
        """Whether this very attempt's result is the one recorded."""
        with self._sessions() as s:
            row = s.execute(select(StageRun.status, StageRun.attempt).where(StageRun.id == run.id)).one_or_none()
        return row is not None and row.status == RunStatus.SUCCEEDED and row.attempt == run.attempt

    def set_progress(self, run_id: uuid.UUID | str, progress: dict[str, Any]) -> None:
        with self._sessions.begin() as s:
            s.execute(
                update(StageRun).where(StageRun.id == _uuid(run_id), StageRun.status == RunStatus.RUNNING)
                .values(progress=json_safe(progress))
            )

    # ---------------------------------------------------------------- artifacts

    def finished_among(self, job_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        with self._sessions() as s:
            return list(s.scalars(select(Job.id).where(Job.id.in_(list(job_ids)), Job.status.in_(list(FINAL_JOB)))))

    def intermediate_refs(self, job_id: uuid.UUID) -> list[dict]:
        """Artifact references of a finished job's stage outputs that are not its final outputs."""
        with self._sessions() as s:
            job = s.get(Job, job_id)
            if job is None or JobStatus(job.status) not in FINAL_JOB:
                return []
            return _intermediate_refs(job, s.scalars(select(StageRun).where(StageRun.job_id == job_id)))

    # ---------------------------------------------------------------- cancel

    def cancel(self, job_id: uuid.UUID | str, owner: str | None = None) -> JobView:
        """Cancel a queued or running job. Pending runs never start; running ones are told to stop."""
        now = utcnow()
        with self._sessions.begin() as s:
            job = s.get(Job, _uuid(job_id), with_for_update=True)
            if job is None or (owner is not None and job.owner != owner):
                raise NotFound(f"no job '{job_id}'", field="id")
            if JobStatus(job.status) in FINAL_JOB:
                raise Conflict(f"job is already {job.status}", field="status")
            s.execute(
                update(StageRun)
                .where(StageRun.job_id == job.id, StageRun.status.in_(
                    [RunStatus.WAITING, RunStatus.QUEUED, RunStatus.RUNNING]))
                .values(status=RunStatus.CANCELED, finished_at=now, updated_at=now, lease_until=None)
            )
            self._finish_job(job, JobStatus.CANCELED, now, error={"code": "canceled", "message": "canceled by request"})
        return self.get_job(job_id)

    # ---------------------------------------------------------------- reconciliation

    def expired_leases(self, now: datetime | None = None) -> list[tuple[uuid.UUID, uuid.UUID]]:
        now = now or utcnow()
        with self._sessions() as s:
            rows = s.execute(
                select(StageRun.id, StageRun.job_id).where(
                    StageRun.status == RunStatus.RUNNING, StageRun.lease_until < now)
            ).all()
        return [(r.id, r.job_id) for r in rows]

    def release_expired(self, run_id: uuid.UUID, job_id: uuid.UUID) -> list[StageTask]:
        """A worker lost its run (killed, host gone): count the attempt and queue it again or fail."""
        now = utcnow()
        with self._sessions.begin() as s:
            job = self._lock_job(s, job_id)
            row = s.get(StageRun, run_id)
            if row.status != RunStatus.RUNNING or row.lease_until is None or row.lease_until >= now:
                return []
            error = {"code": "lease_expired", "type": "WorkerLost",
                     "message": f"worker {row.worker} stopped renewing its lease"}
            return self._record_failure(s, job, row, error, row.attempt < row.max_attempts, 0.0, row.worker, now)

    def stale_queued(self, older_than_s: float, limit: int = 1000, *, published: bool | None = None,
                     unpublished_after_s: float | None = None) -> list[StageTask]:
        """Queued runs whose message may be gone: published more than `older_than_s` ago, or never
        published (the publish failed) for `unpublished_after_s` (default: `older_than_s`).

        `published` narrows to one kind. Oldest first, so a backlog is walked from its head.
        """
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_s)
        unpublished_cutoff = now - timedelta(seconds=older_than_s if unpublished_after_s is None
                                             else unpublished_after_s)
        kinds = []
        if published is not False:
            kinds.append(StageRun.enqueued_at < cutoff)
        if published is not True:
            kinds.append(and_(StageRun.enqueued_at.is_(None), StageRun.updated_at < unpublished_cutoff))
        with self._sessions() as s:
            rows = s.execute(
                select(StageRun.id, StageRun.attempt, StageRun.queue, Job.priority)
                .join(Job, Job.id == StageRun.job_id)
                .where(StageRun.status == RunStatus.QUEUED, or_(*kinds))
                .order_by(StageRun.updated_at)
                .limit(limit)
            ).all()
        return [StageTask(str(r.id), r.attempt, r.queue, r.priority) for r in rows]

    # ---------------------------------------------------------------- internals

    def _record_failure(self, s: Session, job: Job, row: StageRun, error: dict, retry: bool, delay_s: float,
                        worker: str | None, now: datetime) -> list[StageTask]:
        entry = {**error, "attempt": row.attempt, "worker": worker or row.worker, "at": now.isoformat()}
        row.errors = [*row.errors, entry]
        row.error = entry
        row.lease_until = None
        row.updated_at = now
        if retry:
            row.status = RunStatus.QUEUED
            row.enqueued_at = now
            return [StageTask(str(row.id), row.attempt, row.queue, job.priority, delay_s)]
        row.status = RunStatus.FAILED
        row.finished_at = now
        s.flush()
        return self._advance(s, job, now, {r.stage: r for r in s.scalars(
            select(StageRun).where(StageRun.job_id == job.id))})

    def _advance(self, s: Session, job: Job, now: datetime, runs: dict[str, StageRun]) -> list[StageTask]:
        """After a run ended: queue stages that became ready, or finish the job. `runs`: the job's, by stage."""
        spec = self.pipelines.get(job.pipeline)
        statuses = {name: RunStatus(r.status) for name, r in runs.items()}
        outcome = orchestrator.job_outcome(statuses)
        if outcome == JobStatus.FAILED:
            for r in runs.values():
                if r.status in (RunStatus.WAITING, RunStatus.QUEUED, RunStatus.RUNNING):
                    r.status, r.finished_at, r.updated_at, r.lease_until = RunStatus.CANCELED, now, now, None
            failed = next(r for r in runs.values() if r.status == RunStatus.FAILED)
            self._finish_job(job, JobStatus.FAILED, now, error={"stage": failed.stage, **(failed.error or {})})
            return []
        if outcome == JobStatus.SUCCEEDED:
            outputs = orchestrator.job_outputs(
                spec, {n: r.outputs or {} for n, r in runs.items() if r.status == RunStatus.SUCCEEDED})
            self._finish_job(job, JobStatus.SUCCEEDED, now, outputs=outputs)
            return []
        tasks = []
        for name in orchestrator.newly_ready(spec, statuses):
            run = runs[name]
            run.status, run.updated_at, run.enqueued_at = RunStatus.QUEUED, now, now
            tasks.append(StageTask(str(run.id), run.attempt, run.queue, job.priority))
        return tasks

    @staticmethod
    def _finish_job(job: Job, status: JobStatus, now: datetime, outputs: dict | None = None,
                    error: dict | None = None) -> None:
        job.status, job.finished_at, job.updated_at = status, now, now
        job.outputs, job.error = outputs, error
        # The outbox row commits with the final state, or neither does.
        record_event(Session.object_session(job), job, f"job.{status}", now)

    @staticmethod
    def _lock_job(s: Session, job_id: uuid.UUID) -> Job:
        # Serialises decisions about one job (fan-in, finalisation) across workers.
        return s.get(Job, job_id, with_for_update=True)

    @staticmethod
    def _outputs_of(s: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, dict]]:
        """The outputs of these jobs' succeeded runs, by job and stage (one query for a batch)."""
        found: dict[uuid.UUID, dict[str, dict]] = {}
        if job_ids:
            rows = s.execute(select(StageRun.job_id, StageRun.stage, StageRun.outputs).where(
                StageRun.job_id.in_(job_ids), StageRun.status == RunStatus.SUCCEEDED))
            for r in rows:
                found.setdefault(r.job_id, {})[r.stage] = r.outputs or {}
        return found

    def _view(self, s: Session, job: Job, runs: list[StageRun] | None = None) -> JobView:
        if runs is None:
            runs = s.scalars(select(StageRun).where(StageRun.job_id == job.id)).all()
        spec_order = {name: i for i, name in enumerate(self.pipelines.get(job.pipeline).stages)} \
            if job.pipeline in self.pipelines else {}
        return JobView(
            id=job.id, pipeline=job.pipeline, status=job.status, owner=job.owner, priority=job.priority,
            inputs=job.inputs, params=job.params, metadata=job.meta, outputs=job.outputs, error=job.error,
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            stages=[
                RunView(
                    id=r.id, stage=r.stage, status=r.status, attempt=r.attempt, max_attempts=r.max_attempts,
                    params=r.params, inputs=r.inputs, outputs=r.outputs, error=r.error, errors=r.errors,
                    progress=r.progress, worker=r.worker, batch_id=r.batch_id, batch_size=r.batch_size,
                    created_at=r.created_at, enqueued_at=r.enqueued_at, started_at=r.started_at,
                    finished_at=r.finished_at, lease_until=r.lease_until,
                )
                for r in sorted(runs, key=lambda r: spec_order.get(r.stage, 0))
            ],
        )


@dataclass
class BatchRecord:
    """What recording a batch decided: the runs recorded, tasks to publish, and the jobs it finished
    (with the references of their intermediate artifacts, now free to delete)."""

    recorded: set[uuid.UUID] = field(default_factory=set)
    tasks: list[StageTask] = field(default_factory=list)
    finished: dict[uuid.UUID, list[dict]] = field(default_factory=dict)


def _intermediate_refs(job: Job, runs: Iterable[StageRun]) -> list[dict]:
    kept = {ref["artifact"] for ref in refs_in(job.outputs)}
    return [ref for run in runs for ref in refs_in(run.outputs) if ref["artifact"] not in kept]


def _initial_status(stage: str, ready: set[str], skipped: set[str]) -> RunStatus:
    if stage in skipped:
        return RunStatus.SKIPPED
    return RunStatus.QUEUED if stage in ready else RunStatus.WAITING


def json_safe(value: Any) -> Any:
    """Postgres JSON cannot hold NUL characters, which byte-level tokenizers can decode to."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no job '{value}'", field="id") from None


# The columns a list reads (jobs.inputs, jobs.outputs and every run's values stay in the database).
_SUMMARY_JOB = ("id", "pipeline", "status", "owner", "priority", "meta", "error", "created_at", "started_at",
                "finished_at")
_SUMMARY_RUN = ("stage", "status", "attempt", "max_attempts", "errors", "started_at", "finished_at")


def _encode_cursor(job: Job | JobView | JobSummary) -> str:
    raw = json.dumps([job.created_at.isoformat(), str(job.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is not one this API returned", field="cursor") from exc
