"""Which stage task messages the broker really holds, for the reconciler's "is it lost?" question.

NOTE: a queued run whose message was published long ago is either still waiting behind a
backlog or was lost (Redis restarted or flushed, a publisher died after marking it). Republishing
on age alone would double every message of a backlog older than the age, so queue depth would
count each run twice. The broker can answer instead: a message waits in the queue's lists, or is
held unacknowledged by a consumer (kombu's `unacked` hash: taken for a batch, or held until its
retry time). Only runs found in neither are republished.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable

from omnijobs.admission import queue_keys

log = logging.getLogger(__name__)

# kombu's Redis transport keeps delivered, unacknowledged messages in this hash.
UNACKED = "unacked"
_SCAN_BATCH = 1000


class RedisQueueProbe:
    def __init__(self, redis_client):
        self.redis = redis_client

    def held(self, queues: Iterable[str]) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """(waiting, unacknowledged): (run id, attempt) of the stage task messages in `queues`' lists,
        and of those consumers hold unacknowledged (any queue)."""
        waiting: set[tuple[str, int]] = set()
        for queue in set(queues):
            for key in queue_keys(queue):
                start = 0
                while batch := self.redis.lrange(key, start, start + _SCAN_BATCH - 1):
                    waiting.update(filter(None, map(_task_of, batch)))
                    start += len(batch)
        unacked: set[tuple[str, int]] = set()
        for raw in self.redis.hvals(UNACKED):
            try:
                envelope = json.loads(raw)[0]
            except (ValueError, IndexError, TypeError, KeyError):
                continue
            unacked.update(filter(None, [_task_of(envelope)]))
        return waiting, unacked


def _task_of(message) -> tuple[str, int] | None:
    """(run id, attempt) from a Celery message envelope; None for anything else."""
    try:
        envelope = json.loads(message) if isinstance(message, bytes | str) else message
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]), int(args[1])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def probe_for(broker_url: str) -> RedisQueueProbe | None:
    """A probe for a Redis broker; None for brokers it cannot read (then the age alone decides)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    return RedisQueueProbe(redis.Redis.from_url(broker_url, socket_timeout=10))
