"""The baseline of the no-op benchmark: a raw Celery chain of three no-op tasks, one worker per task.

Configured like the stage workers' Celery app (JSON, late acks, one solo process per queue,
prefetch as deep as a stage batch) but with no database, no artifacts and no batching: what
the same broker costs when nothing is persisted.

    celery -A loadtest.celery_chain worker -Q bench.a -P solo   # one per queue; BENCH_BROKER_URL set
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

STAGES = ("a", "b", "c")
DONE = "bench:chain:done"

app = Celery("bench_chain", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"),
             set_as_current=False)
app.conf.update(
    task_serializer="json", accept_content=["json"], task_ignore_result=True, result_backend=None,
    task_acks_late=True, worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "16")),
    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
    task_routes={f"bench.{s}": {"queue": f"bench.{s}"} for s in STAGES},
)
_done: redis.Redis | None = None


def _stamp(stamps: list, started: float) -> list:
    return [*stamps, [started, time.time()]]


@app.task(name="bench.a")
def a(stamps: list) -> list:
    return _stamp(stamps, time.time())


@app.task(name="bench.b")
def b(stamps: list) -> list:
    return _stamp(stamps, time.time())


@app.task(name="bench.c")
def c(stamps: list) -> None:
    global _done
    stamps = _stamp(stamps, time.time())
    _done = _done or redis.Redis.from_url(app.conf.broker_url)
    _done.rpush(DONE, json.dumps(stamps))
