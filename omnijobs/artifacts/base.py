"""What every artifact store offers, and how artifact keys are made."""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod

from omnijobs.errors import RetryableStageError


class ArtifactStoreUnavailable(RetryableStageError):
    """The store did not answer in time; the stage may succeed when retried."""


def new_key(job_id: str, stage: str, port: str, ext: str = "") -> str:
    """A key no other client can guess: artifact URIs may be shown to the job's owner only."""
    for label, part in (("job_id", job_id), ("stage", stage), ("port", port)):
        if not part or "/" in part or part in (".", ".."):
            raise ValueError(f"{label} {part!r} cannot be part of an artifact key")
    if ext and not ext.startswith("."):
        ext = "." + ext
    return f"{job_id}/{stage}/{port}-{secrets.token_urlsafe(16)}{ext}"


# Where a job's stream chunks too large for Redis go (no stage is named so: stage names are
# identifiers), so the job's end frees them all with one prefix.
CHUNKS_FOLDER = ".chunks"


def chunk_key(job_id: str, stage: str, port: str) -> str:
    return new_key(job_id, CHUNKS_FOLDER, f"{stage}.{port}")


def free_chunks(transit: "Connector", job_id: str) -> int:
    """Delete a finished job's large stream chunks (shared memory frees a job's segments at once)."""
    if transit.scheme == "shm":
        return 0
    return transit.delete_prefix(f"{job_id}/{CHUNKS_FOLDER}")


class Connector(ABC):
    """A place for large artifacts. A missing artifact makes `get` raise FileNotFoundError."""

    scheme: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store `data` under `key` (from `new_key`) and return the URI to read it back."""

    @abstractmethod
    def get(self, uri: str) -> bytes: ...

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove one artifact; a missing one is not an error, so cleanup can be repeated."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every artifact under a folder such as a job id; return how many were removed.

        The prefix always ends at a '/' boundary so job 'ab' never touches job 'abc'.
        """
