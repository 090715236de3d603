"""Following jobs from routes: the app's JobFollower, and the SSE framing rules shared by streams."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request

from omnijobs.streaming import JobFollower

# Sent once at the start of every stream: how long a client waits before reconnecting (ms).
RETRY_MS = 2000
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)\s*(?:$|[,;\s])", re.IGNORECASE)


def _follower(request: Request) -> JobFollower:
    return request.app.state.follower


FollowerDep = Annotated[JobFollower, Depends(_follower)]


def prefer_wait(header: str | None) -> float | None:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), or None without that preference."""
    m = _WAIT.search(header or "")
    return float(m.group(1)) if m else None
