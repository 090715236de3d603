"""Where a job's events live and how an entry is laid out: one Redis stream per job."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Entry types on a job's stream. `delta`: new output of a stage while it runs (text, token ids);
# `status`: a nudge that the job's state changed (readers then re-read the store); `end`: the
# job reached a final state.
DELTA, STATUS, END = "delta", "status", "end"


def channel_key(job_id: str) -> str:
    return f"omnijobs:job:{job_id}:events"


def redis_url_of(broker_url: str) -> str | None:
    """The channel shares the broker's Redis; other brokers (dev mode's file system) have none."""
    return broker_url if broker_url.startswith(("redis://", "rediss://", "unix://")) else None


@dataclass(frozen=True)
class ChannelConfig:
    redis_url: str | None
    # Entries kept per job (approximate trim): a reader that falls this far behind loses the oldest
    # deltas, never the final text, which is in the store.
    maxlen: int = 10_000
    # The stream expires this long after its last write, so abandoned channels clean themselves up...
    ttl_s: int = 3600
    # ...and this long after the job's end event: long enough for a client to resume.
    ended_ttl_s: int = 300

    @classmethod
    def from_settings(cls, settings) -> ChannelConfig:
        return cls(redis_url_of(settings.broker_url), settings.stream_maxlen, settings.stream_ttl_s,
                   settings.stream_ended_ttl_s)


def encode(kind: str, data: dict[str, Any]) -> dict[str, str]:
    return {"type": kind, "data": json.dumps(data, separators=(",", ":"), default=str)}


def decode(fields: dict) -> tuple[str, dict[str, Any]]:
    def text(v) -> str:
        return v.decode() if isinstance(v, bytes) else v

    get = {text(k): text(v) for k, v in fields.items()}
    return get.get("type", ""), json.loads(get.get("data") or "{}")
