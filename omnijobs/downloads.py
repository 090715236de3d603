"""Conditional and partial downloads of a file output: ETag, If-None-Match, Range and If-Range.

Audio and video players seek with `Range: bytes=a-b`; one range is answered with 206 and exactly
those bytes. Several ranges in one request are answered with the whole file (RFC 9110 lets a
server ignore Range), which every player handles.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from omnijobs.outputs import OutputFile

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Download:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def etag_of(data: bytes) -> str:
    """A strong validator: outputs never change once written, so a content hash names the version."""
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(first, last) inclusive for one satisfiable range; None to send everything; False if unsatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:  # several ranges, or another unit: the whole file
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # "-n": the last n bytes
        n = int(last)
        if n == 0:
            return False
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid syntax: ignore the header
    if start >= size:
        return False
    return start, end


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def prepare(out: OutputFile, *, range_header: str | None = None, if_none_match: str | None = None,
            if_range: str | None = None) -> Download:
    data = out.data
    etag = etag_of(data)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": out.content_type,
        "Content-Disposition": f'attachment; filename="{out.filename}"',
        "Cache-Control": "private",
    }
    if _matches(if_none_match, etag):
        return Download(304, b"", {k: v for k, v in headers.items() if k in ("ETag", "Cache-Control")})
    wanted = byte_range(range_header, len(data))
    if wanted is not None and if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's copy is of another version: send it all
    if wanted is False:
        return Download(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
    if wanted is None:
        return Download(200, data, {**headers, "Content-Length": str(len(data))})
    first, last = wanted
    part = data[first:last + 1]
    return Download(206, part, {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}",
                                "Content-Length": str(len(part))})
