"""API keys, webhook secrets, the worker registry and the rate limit, on the real Postgres and Redis."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
import redis
from sqlalchemy import text

from omnijobs.admission import Admission, QueueDepths, queue_keys
from omnijobs.errors import NotFound, TooManyRequests
from omnijobs.settings import Settings
from omnijobs.store.keys import KeyStore
from omnijobs.store.workers import WorkerInfo, WorkerRegistry


@pytest.fixture(scope="module")
def engine(postgres_url):
    from omnijobs.store.db import make_engine

    engine = make_engine(postgres_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def keys(engine):
    return KeyStore(engine)


def test_key_is_stored_only_as_its_hash(keys, engine):
    new = keys.create("alice")
    assert new.key.startswith("omk_") and len(new.key) > 40
    with engine.connect() as conn:
        rows = [tuple(map(str, r)) for r in conn.execute(text("SELECT * FROM api_keys"))]
    assert not any(new.key in col for row in rows for col in row)
    (row,) = [r for r in rows if r[0] == new.id]
    assert hashlib.sha256(new.key.encode()).hexdigest() in row
    principal = keys.verify(new.key)
    assert (principal.id, principal.name, principal.admin) == (new.id, "alice", False)
    listed = {k.id: k for k in keys.list()}
    assert listed[new.id].prefix == new.key[:12] and listed[new.id].revoked_at is None


def test_wrong_and_revoked_keys_do_not_verify(keys):
    new = keys.create("bob", admin=True)
    assert keys.verify(new.key).admin is True
    tampered = new.key[:-1] + ("A" if new.key[-1] != "A" else "B")
    for bad in (tampered, "", "omk_", "Bearer " + new.key, new.key + "x", "x" * 500):
        assert keys.verify(bad) is None, bad
    revoked = keys.revoke(new.id)
    assert revoked.revoked_at is not None
    assert keys.verify(new.key) is None
    assert keys.revoke(new.id).revoked_at == revoked.revoked_at  # revoking twice changes nothing
    with pytest.raises(NotFound):
        keys.revoke("key_missing")


def test_webhook_secret_rotation_keeps_the_previous_one_for_the_grace_period(keys):
    new = keys.create("carol")
    assert keys.webhook_secrets(new.id) == [new.webhook_secret]
    assert new.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(new.webhook_secret.removeprefix("whsec_"))) == 32
    second = keys.rotate_webhook_secret(new.id, grace_s=3600)
    assert keys.webhook_secrets(new.id) == [second, new.webhook_secret]  # newest first
    third = keys.rotate_webhook_secret(new.id, grace_s=0.3)
    # Rotating again shortens every older secret's grace to the new one.
    assert keys.webhook_secrets(new.id) == [third, second, new.webhook_secret]
    time.sleep(0.4)
    assert keys.webhook_secrets(new.id) == [third]
    assert keys.webhook_secrets("key_nobody") == []
    with pytest.raises(NotFound):
        keys.rotate_webhook_secret("key_nobody")


def test_worker_registry_counts_batches_and_marks_dead_and_stopped(engine):
    workers = WorkerRegistry(engine)
    info = WorkerInfo("echo.say@test-host:1", "test-host", 1, "echo.say", "omni.echo.say", "cpu", "echo", None)
    workers.register(info)
    workers.batch_started(info.name, 3)
    workers.batch_done(info.name, succeeded=2, failed=1)
    workers.batch_started(info.name, 1)
    workers.batch_done(info.name, succeeded=1, failed=0)
    (view,) = [w for w in workers.list(dead_after_s=30) if w.name == info.name]
    assert (view.state, view.batches, view.jobs_done, view.failures, view.batch_size) == ("alive", 2, 3, 1, 1)
    time.sleep(0.3)
    assert {w.name: w.state for w in workers.list(dead_after_s=0.2)}[info.name] == "dead"
    stop = workers.start_heartbeat(info.name, 0.05)
    time.sleep(0.2)
    stop.set()
    assert {w.name: w.state for w in workers.list(dead_after_s=0.2)}[info.name] == "alive"
    workers.stopped(info.name)
    assert {w.name: w.state for w in workers.list(dead_after_s=30)}[info.name] == "stopped"


def test_rate_limit_is_a_token_bucket_per_key(redis_url):
    client = redis.Redis.from_url(redis_url)
    admission = Admission(Settings(rate_limit_per_s=2, rate_limit_burst=3), client)
    owner = f"key_rate_{time.monotonic_ns()}"
    for _ in range(3):
        admission.check_rate(owner)
    with pytest.raises(TooManyRequests) as refused:
        admission.check_rate(owner)
    assert refused.value.status == 429 and refused.value.code == "rate_limited" and refused.value.retry_after >= 1
    admission.check_rate(owner + "-other")  # another key has its own bucket
    time.sleep(0.6)  # 2 tokens/s refill: one token back
    admission.check_rate(owner)


def test_queue_depth_counts_every_priority_list(redis_url):
    client = redis.Redis.from_url(redis_url)
    queue = f"omni.depthtest{time.monotonic_ns()}.stage"
    client.rpush(queue, "a", "b")
    client.rpush(f"{queue}:3", "c")
    client.rpush(f"{queue}:9", "d", "e", "f")
    try:
        depths = QueueDepths(client)
        assert depths.by_priority([queue]) == {queue: {0: 2, 3: 1, 9: 3}}
        assert depths.totals([queue, "omni.none.none"]) == {queue: 6, "omni.none.none": 0}
    finally:
        client.delete(*queue_keys(queue))
