"""The reconciler republishes only what is really gone, asking the real Redis broker.

A backlog older than the republish age keeps queue depth equal to the queued runs (nothing is
doubled); messages lost to a flush go again on the next sweep; runs whose publish failed go again
within seconds, not after the republish age.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from omnijobs.admission import queue_keys
from omnijobs.pipelines import load_registry
from omnijobs.reconciler import sweep
from omnijobs.store.db import make_engine
from omnijobs.store.jobs import JobStore, utcnow
from omnijobs.store.migrate import upgrade
from omnijobs.store.tables import StageRun
from tests.services import create_database, drop_database, require_postgres, spare_redis_url
from workers.celery_app import make_celery
from workers.publisher import CeleryPublisher
from workers.queue_probe import RedisQueueProbe

QUEUE_AGE_S = 300.0


@pytest.fixture()
def world(settings):
    pg = require_postgres()
    db = create_database(pg)
    upgrade(db)
    broker_url = spare_redis_url(5)
    engine = make_engine(db)
    store = JobStore(engine, load_registry(settings.pipelines_path))
    app = make_celery(settings.model_copy(update={"broker_url": broker_url, "database_url": db}))
    client = redis.Redis.from_url(broker_url)
    try:
        yield store, CeleryPublisher(app), RedisQueueProbe(client), client
    finally:
        client.flushdb()
        engine.dispose()
        drop_database(pg, db)


def _depth(client, queue: str) -> int:
    return sum(client.llen(k) for k in queue_keys(queue))


def _age(store, run_ids, seconds: float, published: bool = True) -> None:
    then = utcnow() - timedelta(seconds=seconds)
    with store._sessions.begin() as s:
        s.execute(update(StageRun).where(StageRun.id.in_([uuid.UUID(r) for r in run_ids]))
                  .values(updated_at=then, enqueued_at=then if published else None))


def _jobs(store, publisher, n: int):
    tasks = []
    for i in range(n):
        _, made, _ = store.create_job(store.pipelines.get("echo"), {"prompt": f"p{i}"}, {})
        tasks += made
    publisher.publish(tasks)
    store.mark_enqueued(tasks)
    return tasks


def test_a_backlog_past_the_republish_age_is_not_doubled(world):
    store, publisher, probe, client = world
    tasks = _jobs(store, publisher, 20)
    queue = tasks[0].queue
    _age(store, [t.run_id for t in tasks], QUEUE_AGE_S * 2)  # every message waited past the age
    report = sweep(store, publisher, QUEUE_AGE_S, probe)
    assert report.republished == 0
    assert _depth(client, queue) == 20


def test_messages_lost_to_a_flush_go_again_on_the_next_sweep(world):
    store, publisher, probe, client = world
    tasks = _jobs(store, publisher, 12)
    queue = tasks[0].queue
    _age(store, [t.run_id for t in tasks[:8]], 30)  # published 30 s ago: past the check age, far from 300 s
    client.flushdb()
    report = sweep(store, publisher, QUEUE_AGE_S, probe)
    assert report.republished == 8  # the 4 published just now are not asked about yet
    assert _depth(client, queue) == 8
    assert sweep(store, publisher, QUEUE_AGE_S, probe).republished == 0  # now they wait again: no doubles
    assert _depth(client, queue) == 8


def test_runs_never_published_go_again_within_seconds(world):
    store, publisher, probe, client = world
    _, tasks, _ = store.create_job(store.pipelines.get("echo"), {"prompt": "unpublished"}, {})
    _age(store, [t.run_id for t in tasks], 3, published=False)  # the publish failed 3 s ago
    report = sweep(store, publisher, QUEUE_AGE_S, probe)
    assert report.republished == 1
    assert _depth(client, tasks[0].queue) == 1


def test_without_a_probe_published_runs_wait_for_the_age(world):
    store, publisher, _, client = world
    tasks = _jobs(store, publisher, 3)
    _age(store, [t.run_id for t in tasks], 30)
    client.flushdb()
    assert sweep(store, publisher, QUEUE_AGE_S).republished == 0
    _age(store, [t.run_id for t in tasks], QUEUE_AGE_S + 1)
    assert sweep(store, publisher, QUEUE_AGE_S).republished == 3
