"""Statuses of jobs and stage runs."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL_JOB


class RunStatus(StrEnum):
    # NOTE: `waiting` (upstream not done yet) is not in the public job states; a stage run
    # needs it so every stage of a job has a row from the moment the job is accepted.
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    # The job's inputs turned the stage off (its `run_if`), or an upstream stage was skipped.
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        return self in FINAL_RUN


FINAL_JOB = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
FINAL_RUN = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.SKIPPED})
