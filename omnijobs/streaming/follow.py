"""Following one job: its channel's deltas as they come, and its state from the store.

The channel wakes a follower the moment a delta or a state nudge is written; the store is re-read
on a nudge and otherwise every `poll_s` (a slow safety net for state changes nobody announced).
Without a channel (no Redis) the follower polls the store every `fallback_poll_s` and has no deltas.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from omnijobs.store.records import JobView
from omnijobs.streaming.channel import DELTA, ChannelConfig, channel_key, decode

FINAL = ("succeeded", "failed", "canceled")
# Channel entries passed on as they are: token deltas, audio chunks of streamed stages, and the
# restart of a stream (the listener drops the audio it has: it is sent again).
LIVE = (DELTA, "audio", "restart")
START = "0-0"


@dataclass(frozen=True)
class FollowEvent:
    # The channel position this event was read at: what a client sends back to resume after it.
    id: str
    type: str  # "status" | "stage" | "delta" | "audio" | "restart" | "end"
    data: dict[str, Any] = field(default_factory=dict)
    job: JobView | None = None


class JobFollower:
    def __init__(self, store, config: ChannelConfig, poll_s: float = 2.0, fallback_poll_s: float = 0.5):
        self.store = store
        self.config = config
        self.poll_s = poll_s
        self.fallback_poll_s = fallback_poll_s
        self.redis = None
        if config.redis_url is not None:
            import redis.asyncio

            self.redis = redis.asyncio.Redis.from_url(config.redis_url, socket_timeout=poll_s + 10,
                                                      socket_connect_timeout=5)

    @property
    def live(self) -> bool:
        """Whether deltas can be followed (a channel exists)."""
        return self.redis is not None

    async def follow(self, job_id: str, after: str | None = None) -> AsyncIterator[FollowEvent]:
        """State events (status, then each stage) whenever they change, deltas after `after`, then `end`.

        On resume (`after` given) the current state is sent again first: states are snapshots,
        so a client that missed some only needs the latest.
        """
        cursor = _valid_id(after) or START
        seen: dict[str, Any] = {}
        job = await asyncio.to_thread(self.store.get_job, job_id)
        last_poll = time.monotonic()
        while True:
            for event in _state_events(job, seen, cursor):
                yield event
            if job.status in FINAL:
                async for event in self._drain(job_id, cursor):
                    yield event
                yield FollowEvent(cursor, "end", job=job)
                return
            interval = self.poll_s if self.live else self.fallback_poll_s
            nudged = False
            wait_s = max(0.0, interval - (time.monotonic() - last_poll))
            for entry_id, kind, data in await self._read(job_id, cursor, wait_s):
                cursor = entry_id
                if kind in LIVE:
                    yield FollowEvent(entry_id, kind, data)
                else:
                    nudged = True
            if nudged or time.monotonic() - last_poll >= interval:
                job = await asyncio.to_thread(self.store.get_job, job_id)
                last_poll = time.monotonic()

    async def wait(self, job_id: str, timeout_s: float) -> JobView:
        """The job once final, or as it is when `timeout_s` runs out."""
        last: JobView | None = None

        async def run() -> None:
            nonlocal last
            async for event in self.follow(job_id):
                if event.job is not None:
                    last = event.job

        try:
            await asyncio.wait_for(run(), timeout=max(0.0, timeout_s))
        except TimeoutError:
            pass
        return last if last is not None and last.status in FINAL else await asyncio.to_thread(
            self.store.get_job, job_id)

    async def _read(self, job_id: str, cursor: str, wait_s: float) -> list[tuple[str, str, dict]]:
        if self.redis is None:
            await asyncio.sleep(wait_s)
            return []
        block_ms = max(1, int(wait_s * 1000))
        try:
            reply = await self.redis.xread({channel_key(job_id): cursor}, count=512, block=block_ms)
        except Exception:  # NOTE: a channel outage degrades to store polling; it never ends a follow
            await asyncio.sleep(wait_s)
            return []
        return [(_text(entry_id), *decode(fields)) for _, entries in reply or [] for entry_id, fields in entries]

    async def _drain(self, job_id: str, cursor: str) -> AsyncIterator[FollowEvent]:
        """Deltas still on the channel once the store says final (written before the result was)."""
        if self.redis is None:
            return
        while True:
            try:
                reply = await self.redis.xread({channel_key(job_id): cursor}, count=512)
            except Exception:
                return
            entries = [(_text(i), *decode(f)) for _, es in reply or [] for i, f in es]
            if not entries:
                return
            for entry_id, kind, data in entries:
                cursor = entry_id
                if kind in LIVE:
                    yield FollowEvent(entry_id, kind, data)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def _state_events(job: JobView, seen: dict[str, Any], cursor: str):
    if seen.get("") != job.status:
        seen[""] = job.status
        yield FollowEvent(cursor, "status", {"id": str(job.id), "status": job.status}, job)
    for run in job.stages:
        state = (run.status, json.dumps(run.progress, sort_keys=True, default=str))
        if seen.get(run.stage) != state:
            seen[run.stage] = state
            yield FollowEvent(cursor, "stage", {"stage": run.stage, "status": run.status, "progress": run.progress})


def _valid_id(value: str | None) -> str | None:
    """A Redis stream id ("<ms>-<seq>") or None: anything else in Last-Event-ID starts over."""
    if not value:
        return None
    ms, _, seq = value.strip().partition("-")
    return value.strip() if ms.isdigit() and (seq.isdigit() or seq == "") and len(value) < 64 else None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v
