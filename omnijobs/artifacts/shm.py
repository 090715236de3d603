"""Artifacts in POSIX shared memory, for stages on the same host (Linux: segments live in /dev/shm)."""

from __future__ import annotations

import hashlib
import re
import secrets
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from omnijobs.artifacts.base import Connector

SHM_DIR = Path("/dev/shm")
# Short enough for every platform's segment name limit (31 bytes on macOS, leading '/' included).
_NAME = re.compile(r"^oj[0-9a-f]{12}_[0-9a-f]{14}$")


def _open(name: str, create: bool = False, size: int = 0) -> SharedMemory:
    # The creating process exits long before the consuming stage reads the segment, so the
    # resource tracker must not unlink it at exit: this connector owns the lifetime.
    try:
        return SharedMemory(name=name, create=create, size=size, track=False)
    except TypeError:  # Python < 3.13 has no track flag
        seg = SharedMemory(name=name, create=create, size=size)
        resource_tracker.unregister(seg._name, "shared_memory")
        return seg


class ShmConnector(Connector):
    scheme = "shm"

    def __init__(self, namespace: str = "omnijobs"):
        self.namespace = namespace

    def _job_tag(self, job_id: str) -> str:
        # Segment names carry a digest of the job so a job's segments can be found without an index.
        return hashlib.sha256(f"{self.namespace}/{job_id}".encode()).hexdigest()[:12]

    @staticmethod
    def _parse(uri: str) -> tuple[str, int]:
        parsed = urlparse(uri)
        name = parsed.netloc
        if parsed.scheme != "shm" or not _NAME.match(name):
            raise ValueError(f"not an artifact shared memory URI: {uri!r}")
        try:
            size = int(parse_qs(parsed.query)["size"][0])
        except (KeyError, ValueError):
            raise ValueError(f"shared memory URI without a valid size: {uri!r}") from None
        return name, size

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        job_id = key.split("/", 1)[0]
        name = f"oj{self._job_tag(job_id)}_{secrets.token_hex(7)}"
        # Segments cannot be empty and may be rounded up to a page: the URI keeps the true length.
        seg = _open(name, create=True, size=max(1, len(data)))
        try:
            seg.buf[: len(data)] = data
        finally:
            seg.close()
        return f"shm://{name}?size={len(data)}"

    def get(self, uri: str) -> bytes:
        name, size = self._parse(uri)
        seg = _open(name)
        try:
            if size > seg.size:
                raise ValueError(f"{uri!r} claims {size} bytes but the segment has {seg.size}")
            return bytes(seg.buf[:size])
        finally:
            seg.close()

    def delete(self, uri: str) -> None:
        self._unlink(self._parse(uri)[0])

    @staticmethod
    def _unlink(name: str) -> bool:
        try:
            # Attach with tracking so unlink's unregister is balanced on every Python version.
            seg = SharedMemory(name=name)
        except FileNotFoundError:
            return False
        seg.close()
        try:
            seg.unlink()
        except FileNotFoundError:
            return False
        return True

    def list_segments(self, job_id: str | None = None) -> list[str]:
        pattern = f"oj{self._job_tag(job_id)}_*" if job_id is not None else "oj*_*"
        return sorted(p.name for p in SHM_DIR.glob(pattern) if _NAME.match(p.name))

    def delete_prefix(self, prefix: str) -> int:
        job_id = prefix.strip("/")
        if not job_id or "/" in job_id:
            raise ValueError(f"shared memory artifacts can only be deleted per job, not {prefix!r}")
        return sum(self._unlink(name) for name in self.list_segments(job_id))
