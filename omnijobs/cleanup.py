"""Freeing a finished job's intermediate artifacts (tensors passed between its stages).

Called by whoever ends a job: the worker that records its last stage, the API that cancels it,
the reconciler that fails it after a lost worker. Deleting is idempotent, so overlaps are fine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from omnijobs.artifacts.base import free_chunks

log = logging.getLogger(__name__)


def clean_finished_jobs(store, values, job_ids: Iterable) -> int:
    """Delete the intermediate artifacts of those jobs that are final; return how many were removed."""
    removed = 0
    for job_id in store.finished_among(set(job_ids)):
        try:
            removed += values.delete(store.intermediate_refs(job_id))
            if values.transit.scheme == "shm":
                # Shared memory holds nothing final, so every segment of the job can go, including
                # one a killed worker wrote but never recorded.
                removed += values.transit.delete_prefix(str(job_id))
            removed += free_chunks(values.transit, str(job_id))
        except Exception:  # never fail the caller's real work over cleanup
            log.exception("could not clean up the artifacts of job %s", job_id)
    return removed
