"""Webhook outbox and delivery against the real Postgres and a real HTTP receiver; retention."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

from omnijobs.artifacts.file import FileConnector
from omnijobs.artifacts.refs import make_ref
from omnijobs.retention import sweep_retention
from omnijobs.store.retention import RetentionStore
from omnijobs.store.tables import Job, StageRun, WebhookDelivery
from omnijobs.store.webhooks import WebhookStore
from omnijobs.webhooks import signing
from omnijobs.webhooks.events import message_id
from omnijobs.webhooks.policy import DeliveryPolicy
from omnijobs.webhooks.relay import relay
from omnijobs.webhooks.secrets import SecretSource
from omnijobs.webhooks.sender import Sender
from tests.webhook_receiver import Receiver

SECRET = signing.new_secret()
LOCAL = frozenset({"127.0.0.1"})


class Collect:
    def __init__(self):
        self.tasks = []

    def publish_deliveries(self, tasks):
        self.tasks.extend(tasks)


@pytest.fixture(scope="module")
def store(private_store):
    # The session's database is shared with e2e clusters whose reconcilers relay due deliveries
    # onto their own queues, which would take this module's deliveries away from its sender.
    return private_store


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture()
def sender(store):
    with httpx.Client() as client:
        yield Sender(WebhookStore(store.engine), store.get_job, lambda v: {"id": str(v.id), "status": v.status},
                     SecretSource([SECRET]), DeliveryPolicy((0.0, 0.0, 0.0), jitter=0.0, rand=random.Random(1)),
                     client, timeout_s=5, lease_s=30, allowed_hosts=LOCAL)


def run_job(store, url, events=None, prompt="hi"):
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": prompt}, {},
                                       webhook=url, webhook_events=events)
    (run,) = store.claim([(task.run_id, task.attempt)], "w", "b", 30)
    store.complete(run, {"text": f"say({prompt})"})
    return job.id


def deliveries(store, job_id):
    return WebhookStore(store.engine).list_for_job(job_id)


def drain(store, sender, rounds=10):
    """Relay and send until nothing is due (the schedule here is all zero delays)."""
    sent = 0
    for _ in range(rounds):
        pub = Collect()
        if not relay(WebhookStore(store.engine), pub, stale_after_s=300):
            return sent
        for t in pub.tasks:
            sender.deliver(t.delivery_id, t.attempts)
            sent += 1
    return sent


def test_events_are_written_with_the_state_change_and_filtered(store):
    all_events = ["job.succeeded", "job.failed", "job.canceled", "job.started", "job.stage_completed"]
    job_id = run_job(store, "http://127.0.0.1:9/a", all_events)
    rows = deliveries(store, job_id)
    assert [(d.event, d.stage, d.status) for d in rows] == [
        ("job.started", None, "pending"), ("job.stage_completed", "say", "pending"), ("job.succeeded", None, "pending")]
    default = run_job(store, "http://127.0.0.1:9/b", ["job.succeeded", "job.failed", "job.canceled"])
    assert [d.event for d in deliveries(store, default)] == ["job.succeeded"]
    assert deliveries(store, run_job(store, None)) == []
    job, _, _ = store.create_job(store.pipelines.get("echo"), {"prompt": "c"}, {}, webhook="http://127.0.0.1:9/c",
                                 webhook_events=["job.canceled"])
    store.cancel(job.id)
    assert [d.event for d in deliveries(store, job.id)] == ["job.canceled"]


def test_500_then_200_same_id_verified_and_logged(store, sender, receiver):
    receiver.scripts["/flaky"] = [500, (503, {"Retry-After": "0"}), 200]
    job_id = run_job(store, f"{receiver.url}/flaky", ["job.succeeded"])
    drain(store, sender)
    got = receiver.at("/flaky")
    assert [r.answered for r in got] == [500, 503, 200]
    ids = {r.headers["webhook-id"] for r in got}
    (delivery,) = deliveries(store, job_id)
    assert ids == {message_id(delivery.id)}
    assert len({r.body for r in got}) == 1  # the same bytes on every attempt
    event = Webhook(SECRET).verify(got[-1].body, got[-1].headers)
    assert event["type"] == "job.succeeded" and event["data"] == {"id": str(job_id), "status": "succeeded"}
    assert delivery.status == "delivered" and delivery.attempts == 3
    assert [e["status_code"] for e in delivery.log] == [500, 503, 200]
    assert delivery.log[0]["error"].startswith("HTTP 500") and delivery.log[2]["error"] is None
    assert delivery.log[1]["retry_after"] == "0" and all(e["latency_ms"] >= 0 for e in delivery.log)


def test_410_stops_and_exhaustion_fails(store, sender, receiver):
    receiver.scripts["/gone"] = [410]
    gone = run_job(store, f"{receiver.url}/gone")
    receiver.scripts["/down"] = [500] * 10
    down = run_job(store, f"{receiver.url}/down")
    drain(store, sender)
    assert len(receiver.at("/gone")) == 1 and deliveries(store, gone)[0].status == "stopped"
    assert len(receiver.at("/down")) == 4  # first attempt + the three scheduled retries
    assert deliveries(store, down)[0].status == "failed"


def test_duplicate_and_stale_messages_send_nothing(store, sender, receiver):
    job_id = run_job(store, f"{receiver.url}/dup")
    pub = Collect()
    relay(WebhookStore(store.engine), pub, 300)
    (task,) = [t for t in pub.tasks if deliveries(store, job_id)[0].id == uuid.UUID(t.delivery_id)]
    assert sender.deliver(task.delivery_id, task.attempts) == "delivered"
    assert sender.deliver(task.delivery_id, task.attempts) is None
    assert len(receiver.at("/dup")) == 1
    assert relay(WebhookStore(store.engine), Collect(), 300) == 0  # delivered: nothing due


def test_lost_message_and_dead_sender_are_sent_again(store, sender, receiver):
    webhooks = WebhookStore(store.engine)
    job_id = run_job(store, f"{receiver.url}/lost")
    (d,) = deliveries(store, job_id)
    first = Collect()
    relay(webhooks, first, 300)
    assert relay(webhooks, Collect(), 300) == 0  # handed to the queue already
    # The message vanished with the broker: once stale, the relay hands it over again.
    with store._sessions.begin() as s:
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == d.id)
                  .values(enqueued_at=datetime.now(UTC) - timedelta(seconds=400)))
    again = Collect()
    relay(webhooks, again, 300)
    assert [t.delivery_id for t in again.tasks] == [str(d.id)]
    # A sender that claimed it and died: after its lease the attempt counts as failed and is retried.
    assert webhooks.claim(d.id, 0, lease_s=0.0, now=datetime.now(UTC)) is not None
    drain(store, sender)
    (d,) = deliveries(store, job_id)
    assert d.status == "delivered" and d.attempts == 2 and "stopped before" in d.log[0]["error"]
    assert len(receiver.at("/lost")) == 1


def test_manual_redelivery_keeps_the_id(store, sender, receiver):
    job_id = run_job(store, f"{receiver.url}/again")
    drain(store, sender)
    (d,) = deliveries(store, job_id)
    pub = Collect()
    from omnijobs.webhooks.relay import redeliver

    redeliver(WebhookStore(store.engine), pub, str(job_id), str(d.id))
    (task,) = pub.tasks
    assert sender.deliver(task.delivery_id, task.attempts) == "delivered"
    got = receiver.at("/again")
    assert len(got) == 2 and got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    assert deliveries(store, job_id)[0].attempts == 2


@pytest.fixture
def own_store(store):
    """A database of its own: a retention sweep covers every finished job of its database."""
    from omnijobs.store.db import make_engine
    from omnijobs.store.jobs import JobStore
    from omnijobs.store.migrate import upgrade
    from tests.services import create_database, drop_database, require_postgres

    admin = require_postgres()
    url = create_database(admin)
    upgrade(url)
    own = JobStore(make_engine(url), store.pipelines)
    yield own
    own.engine.dispose()
    drop_database(admin, url)


def test_retention_deletes_artifacts_and_keeps_the_row(own_store, settings, tmp_path):
    store = own_store
    cfg = settings.model_copy(update={"artifacts": "file", "artifacts_dir": tmp_path, "retention_s": 60.0})
    files = FileConnector(tmp_path)
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "keep"}, {})
    out_uri = files.put(f"{job.id}/say/text-1.txt", b"hello")
    stray_uri = files.put(f"{job.id}/say/text-2.txt", b"from an attempt that died")
    upload_uri = files.put("uploads/shared.png", b"named by other jobs too")
    (run,) = store.claim([(task.run_id, task.attempt)], "w", "b", 30)
    with store._sessions.begin() as s:  # as if the stage had read an upload
        s.execute(update(StageRun).where(StageRun.id == run.id).values(
            inputs={"image": {**make_ref(upload_uri, "image", "image/png", 23), "file": "f1"}}))
    store.complete(run, {"text": make_ref(out_uri, "text", "text/plain", 5)})
    retention = RetentionStore(store.engine)
    assert sweep_retention(retention, cfg).jobs == 0  # not old enough yet
    with store._sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job.id).values(finished_at=datetime.now(UTC) - timedelta(seconds=61)))
    report = sweep_retention(retention, cfg)
    assert report.jobs >= 1 and report.failed == 0
    with pytest.raises(FileNotFoundError):
        files.get(out_uri)
    with pytest.raises(FileNotFoundError):
        files.get(stray_uri)
    assert files.get(upload_uri) == b"named by other jobs too"
    view = store.get_job(job.id)
    assert view.status == "succeeded" and view.outputs["text"]["expired"] is True
    assert retention.expired_at(job.id) is not None
    with store._sessions() as s:
        outputs = s.scalar(select(StageRun.outputs).where(StageRun.job_id == job.id))
    assert outputs["text"]["expired"] is True
    with store._sessions() as s:
        inputs = s.scalar(select(StageRun.inputs).where(StageRun.job_id == job.id))
    assert "expired" not in inputs["image"]  # the upload was kept, so its reference is not marked
    assert sweep_retention(retention, cfg).jobs == 0  # done once
    json.dumps(view.outputs)


def test_owner_secrets_sign_and_rotation_signs_twice(store, receiver):
    from omnijobs.store.keys import KeyStore

    keys = KeyStore(store.engine)
    key = keys.create("hooks-owner")
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "own"}, {}, owner=key.id,
                                       webhook=f"{receiver.url}/owned", webhook_events=["job.succeeded"])
    (run,) = store.claim([(task.run_id, task.attempt)], "w", "b", 30)
    store.complete(run, {"text": "say(own)"})
    rotated = keys.rotate_webhook_secret(key.id)
    with httpx.Client() as client:
        sender = Sender(WebhookStore(store.engine), store.get_job, lambda v: {"id": str(v.id)},
                        SecretSource([SECRET], keys), DeliveryPolicy((0.0,), jitter=0.0), client, allowed_hosts=LOCAL)
        drain(store, sender)
    (got,) = receiver.wait_for("/owned", 1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2  # the new and the old secret, during the grace
    for secret in (rotated, key.webhook_secret):
        assert Webhook(secret).verify(got.body, got.headers)["data"] == {"id": str(job.id)}
    with pytest.raises(Exception, match="match"):
        Webhook(SECRET).verify(got.body, got.headers)  # the deployment secret is for jobs without an owner
