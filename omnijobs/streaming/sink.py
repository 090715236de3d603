"""Worker side of the channel: engines hand their per-step deltas to a DeltaSink.

Publishing is best effort: a Redis hiccup must never fail a stage (the store gets the final text
either way), so errors are logged once in a while and dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from omnijobs.streaming.channel import DELTA, END, STATUS, ChannelConfig, channel_key, encode

log = logging.getLogger("omnijobs.streaming")


class DeltaSink:
    """XADDs a stage's deltas to each job's stream, all rows of one step in one round trip."""

    def __init__(self, config: ChannelConfig, stage: str = "", client=None):
        import redis

        self.config = config
        self.stage = stage
        self.redis = client or redis.Redis.from_url(config.redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._last_error = 0.0

    def emit(self, rows: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        """One delta per row: (request or job id, {"text": ..., "token_ids": [...], ...})."""
        entries = [(_job_id(req), {"stage": self.stage, "run_id": getattr(req, "run_id", None), **delta,
                                   **({"text": _as_stored(delta["text"])} if "text" in delta else {})})
                   for req, delta in rows]
        self._write([(job_id, DELTA, data, self.config.ttl_s) for job_id, data in entries if job_id])

    def status(self, job_id: str, status: str) -> None:
        """Nudge readers that the job's state changed (they re-read the store)."""
        self._write([(str(job_id), STATUS, {"status": status}, self.config.ttl_s)])

    def end(self, job_id: str, status: str) -> None:
        """The job reached a final state: readers stop, and the stream expires soon after."""
        self._write([(str(job_id), END, {"status": status}, self.config.ended_ttl_s)])

    def nudge(self, changes: dict[str, str], ended: frozenset[str] | set[str] = frozenset()) -> None:
        """State changes of a whole batch in one round trip: {job id: status}; `ended` are final."""
        self._write([(str(job_id), END if job_id in ended else STATUS, {"status": status},
                      self.config.ended_ttl_s if job_id in ended else self.config.ttl_s)
                     for job_id, status in changes.items()])

    def _write(self, entries: list[tuple[str, str, dict, int]]) -> None:
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id, kind, data, ttl in entries:
            key = channel_key(job_id)
            pipe.xadd(key, encode(kind, data), maxlen=self.config.maxlen, approximate=True)
            pipe.expire(key, ttl)
        try:
            pipe.execute()
        except Exception as exc:  # NOTE: deltas are a live view; the stage must not fail for them
            now = time.monotonic()
            if now - self._last_error > 30:
                self._last_error = now
                log.warning("event channel unavailable, deltas dropped: %s", exc)


def _as_stored(text: str) -> str:
    # NOTE: the store writes NUL (which byte-level tokenizers can decode to) as U+FFFD, since Postgres
    # JSON cannot hold it; the deltas do the same, so they still join to the stored text.
    return text.replace("\x00", "\ufffd")


def _job_id(req: Any) -> str:
    return str(getattr(req, "job_id", req) or "")


def _no_deltas(rows) -> None:
    return None


def delta_sink(settings, stage: str = ""):
    """The engines' `emit_delta` for these settings: a DeltaSink's emit, or a no-op without Redis."""
    config = ChannelConfig.from_settings(settings)
    if config.redis_url is None:
        return _no_deltas
    return DeltaSink(config, stage).emit
