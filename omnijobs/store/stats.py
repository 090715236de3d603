"""What the stages and pipelines did over a recent window, computed from stage_runs and jobs."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, func, inspect, select, text

from omnijobs.store.db import make_sessions
from omnijobs.store.states import JobStatus, RunStatus
from omnijobs.store.tables import Job, StageRun

# Enough for any window a dashboard asks for; beyond it the figures describe the newest rows.
MAX_ROWS = 200_000


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles, rounded to the millisecond; None for an empty sample."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in points:
        if not ordered:
            out[f"p{p}"] = None
            continue
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p}"] = round(ordered[rank - 1], 3)
    return out


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() if a and b else None


class StatsStore:
    def __init__(self, engine: Engine):
        self._sessions = make_sessions(engine)

    def window(self, window_s: float, bucket_s: float | None = None) -> dict[str, Any]:
        """Per stage and per pipeline: throughput, batch sizes, wait and run percentiles, failures, retries."""
        now = datetime.now(UTC)
        since = now - timedelta(seconds=window_s)
        bucket_s = bucket_s or max(1.0, window_s / 60)
        with self._sessions() as s:
            runs = s.execute(
                select(StageRun.queue, StageRun.status, StageRun.attempt, StageRun.batch_id, StageRun.batch_size,
                       StageRun.created_at, StageRun.enqueued_at, StageRun.started_at, StageRun.finished_at)
                .where(StageRun.finished_at >= since)
                .order_by(StageRun.finished_at.desc()).limit(MAX_ROWS)
            ).all()
            jobs = s.execute(
                select(Job.pipeline, Job.status, Job.created_at, Job.started_at, Job.finished_at)
                .where(Job.finished_at >= since).order_by(Job.finished_at.desc()).limit(MAX_ROWS)
            ).all()
            backlog = s.execute(
                select(Job.pipeline, Job.status, func.count())
                .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])).group_by(Job.pipeline, Job.status)
            ).all()
        stages: dict[str, list] = defaultdict(list)
        for r in runs:
            stages[r.queue.removeprefix("omni.")].append(r)
        by_pipeline: dict[str, list] = defaultdict(list)
        for j in jobs:
            by_pipeline[j.pipeline].append(j)
        open_jobs: dict[str, dict[str, int]] = defaultdict(dict)
        for pipeline, status, n in backlog:
            open_jobs[pipeline][status] = n
        return {
            "window_s": window_s,
            "bucket_s": bucket_s,
            "since": since.isoformat(),
            "now": now.isoformat(),
            "stages": {name: _stage_stats(rows, window_s, since, bucket_s) for name, rows in sorted(stages.items())},
            "pipelines": {
                name: _pipeline_stats(by_pipeline.get(name, []), open_jobs.get(name, {}), window_s)
                for name in sorted(set(by_pipeline) | set(open_jobs))
            },
        }


def _stage_stats(rows: list, window_s: float, since: datetime, bucket_s: float) -> dict[str, Any]:
    status = Counter(r.status for r in rows)
    succeeded = status.get(RunStatus.SUCCEEDED, 0)
    batches = {r.batch_id: r.batch_size for r in rows if r.batch_id and r.batch_size}
    waits = [w for r in rows if (w := _seconds(r.enqueued_at or r.created_at, r.started_at)) is not None]
    run_times = [t for r in rows if (t := _seconds(r.started_at, r.finished_at)) is not None]
    n_buckets = max(1, math.ceil(window_s / bucket_s))
    series = Counter(min(n_buckets - 1, int((r.finished_at - since).total_seconds() // bucket_s)) for r in rows
                     if r.status == RunStatus.SUCCEEDED)
    return {
        "runs": len(rows),
        "succeeded": succeeded,
        "failed": status.get(RunStatus.FAILED, 0),
        "canceled": status.get(RunStatus.CANCELED, 0),
        # Attempts beyond the first, over the runs that ended in the window.
        "retries": sum(max(0, r.attempt - 1) for r in rows),
        "throughput_per_s": round(succeeded / window_s, 4),
        "batches": len(batches),
        "batch_sizes": {str(k): v for k, v in sorted(Counter(batches.values()).items())},
        "mean_batch_size": round(sum(batches.values()) / len(batches), 3) if batches else None,
        "queue_wait_s": percentiles(waits),
        "run_s": percentiles(run_times),
        # Succeeded runs per bucket, oldest first: the throughput chart.
        "series": [series.get(i, 0) for i in range(n_buckets)],
    }


def _pipeline_stats(rows: list, open_jobs: dict[str, int], window_s: float) -> dict[str, Any]:
    status = Counter(r.status for r in rows)
    succeeded = status.get(JobStatus.SUCCEEDED, 0)
    return {
        "finished": len(rows),
        "succeeded": succeeded,
        "failed": status.get(JobStatus.FAILED, 0),
        "canceled": status.get(JobStatus.CANCELED, 0),
        "queued": open_jobs.get(JobStatus.QUEUED, 0),
        "running": open_jobs.get(JobStatus.RUNNING, 0),
        "throughput_per_s": round(succeeded / window_s, 4),
        "queue_wait_s": percentiles([w for r in rows if (w := _seconds(r.created_at, r.started_at)) is not None]),
        "total_s": percentiles([t for r in rows if (t := _seconds(r.created_at, r.finished_at)) is not None]),
    }


def _seconds_between(dialect: str, start, end):
    """SQL for (end - start) in seconds, in the store's dialect."""
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


class MonitorQueries:
    """Aggregates over every row, for the queue view and Prometheus (cumulative, so rates work)."""

    def __init__(self, engine: Engine):
        self.dialect = engine.dialect.name
        self._sessions = make_sessions(engine)

    def open_runs(self) -> dict[str, dict[str, Any]]:
        """Per queue: queued and running runs, and when the oldest queued one was put in the queue."""
        with self._sessions() as s:
            rows = s.execute(
                select(StageRun.queue, StageRun.status, func.count(),
                       func.min(func.coalesce(StageRun.enqueued_at, StageRun.updated_at)))
                .where(StageRun.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]))
                .group_by(StageRun.queue, StageRun.status)
            ).all()
        out: dict[str, dict[str, Any]] = defaultdict(lambda: {"queued": 0, "running": 0, "oldest_queued_at": None})
        for queue, status, n, oldest in rows:
            out[queue][status] = n
            if status == RunStatus.QUEUED:
                out[queue]["oldest_queued_at"] = oldest
        return dict(out)

    def jobs_by_status(self) -> list[tuple[str, str, int]]:
        with self._sessions() as s:
            return [tuple(r) for r in s.execute(
                select(Job.pipeline, Job.status, func.count()).group_by(Job.pipeline, Job.status))]

    def duration_histograms(self, buckets: Sequence[float]) -> dict[str, dict[str, tuple[list[int], float, int]]]:
        """{"run_s"|"queue_wait_s": {queue: (cumulative counts per bucket, sum, count)}} over ended runs."""
        run_s = _seconds_between(self.dialect, StageRun.started_at, StageRun.finished_at)
        wait_s = _seconds_between(self.dialect, func.coalesce(StageRun.enqueued_at, StageRun.created_at),
                                  StageRun.started_at)
        out: dict[str, dict[str, tuple[list[int], float, int]]] = {}
        with self._sessions() as s:
            for name, expr in (("run_s", run_s), ("queue_wait_s", wait_s)):
                cols = [func.sum(case((expr <= b, 1), else_=0)) for b in buckets]
                rows = s.execute(
                    select(StageRun.queue, func.count(), func.coalesce(func.sum(expr), 0.0), *cols)
                    .where(StageRun.started_at.is_not(None), StageRun.finished_at.is_not(None))
                    .group_by(StageRun.queue)
                ).all()
                out[name] = {r[0]: ([int(c or 0) for c in r[3:]], float(r[2]), int(r[1])) for r in rows}
        return out

    def batch_size_counts(self) -> dict[str, dict[int, int]]:
        """{queue: {batch size: number of batches}} over every batch that ran."""
        with self._sessions() as s:
            rows = s.execute(
                select(StageRun.queue, StageRun.batch_size, func.count(func.distinct(StageRun.batch_id)))
                .where(StageRun.batch_id.is_not(None), StageRun.batch_size.is_not(None))
                .group_by(StageRun.queue, StageRun.batch_size)
            ).all()
        out: dict[str, dict[int, int]] = defaultdict(dict)
        for queue, size, n in rows:
            out[queue][int(size)] = int(n)
        return dict(out)

    def webhook_deliveries(self) -> list[tuple[str, int]] | None:
        """Deliveries by status, or None where the webhook table does not exist."""
        if not inspect(self._sessions.kw["bind"]).has_table("webhook_deliveries"):
            return None
        with self._sessions() as s:
            rows = s.execute(text("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")).all()
        return [(str(r[0]), int(r[1])) for r in rows]
