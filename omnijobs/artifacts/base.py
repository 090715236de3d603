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
