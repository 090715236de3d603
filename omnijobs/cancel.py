"""Canceling a job on a client's request."""

from __future__ import annotations

from omnijobs.cleanup import clean_finished_jobs
from omnijobs.store.records import JobView


def cancel_job(store, values, job_id: str, owner: str | None = None) -> JobView:
    """Cancel a queued or running job, then free what its finished stages left in transit.

    A running stage notices through its heartbeat and stops between steps; its worker frees what
    that stage wrote when the batch ends.
    """
    job = store.cancel(job_id, owner=owner)
    clean_finished_jobs(store, values, [job.id])
    return job
