"""Admission control: refuse work (429 + Retry-After) rather than grow a backlog without end.

Two checks before a job is written: the per-key rate (a token bucket in Redis, shared by every
API replica) and the depth of the queues the job would be published to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from omnijobs import orchestrator
from omnijobs.errors import TooManyRequests
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.settings import Settings

# Celery's Redis transport keeps one list per priority step: "<queue>" and "<queue>:1".."<queue>:9".
PRIORITY_STEPS = range(10)

# KEYS[1] bucket; ARGV rate/s, burst. Returns {allowed, seconds until a token}. Uses the server's
# clock so replicas with skewed clocks share one bucket fairly.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1]) or burst
local ts = tonumber(data[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


def queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}:{step}" for step in PRIORITY_STEPS]


class QueueDepths:
    """Messages waiting in stage queues, read from the broker's Redis lists."""

    def __init__(self, redis_client):
        self.redis = redis_client

    def by_priority(self, queues: Iterable[str]) -> dict[str, dict[int, int]]:
        """{queue: {broker priority step: waiting messages}} with empty steps left out."""
        queues = list(queues)
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        counts = iter(pipe.execute())
        return {q: {step: n for step in PRIORITY_STEPS if (n := next(counts))} for q in queues}

    def totals(self, queues: Iterable[str]) -> dict[str, int]:
        return {q: sum(steps.values()) for q, steps in self.by_priority(queues).items()}


class Admission:
    def __init__(self, settings: Settings, redis_client=None):
        self.settings = settings
        self.redis = redis_client
        self.depths = QueueDepths(redis_client) if redis_client is not None else None
        self._bucket = redis_client.register_script(_TOKEN_BUCKET) if redis_client is not None else None

    def bound(self, stage_ref: str) -> int:
        return self.settings.queue_bounds.get(stage_ref, self.settings.queue_max_depth)

    def check(self, owner: str, spec: PipelineSpec) -> None:
        """Raise TooManyRequests if this key is over its rate or a first-stage queue is over its bound."""
        self.check_rate(owner)
        self.check_queues(spec)

    def check_rate(self, owner: str) -> None:
        rate, burst = self.settings.rate_limit_per_s, self.settings.rate_limit_burst
        if self._bucket is None or rate <= 0:
            return
        allowed, wait = self._bucket(keys=[f"omnijobs:rate:{owner}"], args=[rate, max(1, burst)])
        if not int(allowed):
            raise TooManyRequests(f"rate limit of {rate:g} submissions/s (burst {burst}) exceeded for this key",
                                  retry_after=math.ceil(float(wait)), code="rate_limited")

    def check_queues(self, spec: PipelineSpec) -> None:
        if self.depths is None:
            return
        first = {spec.queue(name): f"{spec.name}.{name}" for name in orchestrator.initial_ready(spec)}
        bounded = {q: ref for q, ref in first.items() if self.bound(ref) > 0}
        if not bounded:
            return
        for queue, depth in self.depths.totals(bounded).items():
            ref = bounded[queue]
            if depth >= self.bound(ref):
                raise TooManyRequests(
                    f"stage '{ref}' has {depth} jobs waiting, at its bound of {self.bound(ref)}; try again later",
                    retry_after=self.settings.queue_full_retry_after_s, field="pipeline", code="queue_full",
                )


def redis_for(broker_url: str):
    """A Redis client for a redis:// broker; None for other brokers (no depth or rate checks then)."""
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
