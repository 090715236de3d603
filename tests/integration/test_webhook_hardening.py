"""The webhook sender under slow receivers and broken deliveries, against the real Postgres.

A trickling receiver cannot hold a send past its total deadline; any failure of one delivery is
recorded as that delivery's error; one key's sends are capped so other keys' receivers are served.
"""

from __future__ import annotations

import random
import threading
import uuid

import pytest
from sqlalchemy import update

from omnijobs.outbound import guarded_client
from omnijobs.store.tables import WebhookDelivery
from omnijobs.store.webhooks import WebhookStore
from omnijobs.webhooks import signing
from omnijobs.webhooks.policy import DeliveryPolicy
from omnijobs.webhooks.relay import relay
from omnijobs.webhooks.secrets import SecretSource
from omnijobs.webhooks.sender import Sender
from tests.slow_server import Trickler
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
    # Not the session's database: e2e clusters' reconcilers relay due deliveries there.
    return private_store


def make_sender(store, render=None, timeout_s=1.0, per_key=0):
    return Sender(WebhookStore(store.engine), store.get_job, render or (lambda v: {"id": str(v.id)}),
                  SecretSource([SECRET]), DeliveryPolicy((0.0, 0.0), jitter=0.0, rand=random.Random(1)),
                  guarded_client(LOCAL), timeout_s=timeout_s, lease_s=30, allowed_hosts=LOCAL, per_key=per_key)


def finished_job(store, url, owner=None):
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "x"}, {}, webhook=url,
                                       webhook_events=["job.succeeded"], owner=owner)
    (run,) = store.claim([(task.run_id, task.attempt)], "w", "b", 30)
    store.complete(run, {"text": "say(x)"})
    (delivery,) = WebhookStore(store.engine).list_for_job(job.id)
    return delivery


def due(store, *deliveries):
    """The queue messages of these deliveries, from one relay pass."""
    pub = Collect()
    relay(WebhookStore(store.engine), pub, stale_after_s=300)
    found = [next(t for t in pub.tasks if t.delivery_id == str(d.id)) for d in deliveries]
    return found[0] if len(found) == 1 else found


def view(store, delivery):
    return next(d for d in WebhookStore(store.engine).list_for_job(delivery.job_id) if d.id == delivery.id)


@pytest.fixture()
def trickler():
    server = Trickler(pause_s=0.05)
    yield server
    server.close()


def test_a_trickling_receiver_is_cut_at_the_total_deadline(store, trickler):
    delivery = finished_job(store, trickler.url)
    task = due(store, delivery)
    assert make_sender(store, timeout_s=1.0).deliver(task.delivery_id, task.attempts) == "pending"
    after = view(store, delivery)
    assert after.attempts == 1 and after.status == "pending"
    assert "Timeout" in after.log[0]["error"], after.log


def test_an_unexpected_failure_is_recorded_as_that_deliverys_error(store):
    with Receiver() as receiver:
        delivery = finished_job(store, f"{receiver.url}/ok")
        task = due(store, delivery)

        def broken(_view):
            raise RuntimeError("renderer broke")

        assert make_sender(store, render=broken).deliver(task.delivery_id, task.attempts) == "pending"
    after = view(store, delivery)
    assert after.status == "pending" and after.attempts == 1
    assert after.log[0]["error"] == "RuntimeError: renderer broke"


def test_a_control_character_in_a_stored_url_stops_the_delivery_with_its_reason(store):
    delivery = finished_job(store, "http://127.0.0.1:9/ok")
    with store._sessions.begin() as s:  # as a row written before submit refused such URLs
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(url="http://1.2.3.4/a\x01b"))
    task = due(store, delivery)
    assert make_sender(store).deliver(task.delivery_id, task.attempts) == "stopped"
    assert "control characters" in view(store, delivery).log[0]["error"]


def test_one_keys_slow_receiver_does_not_take_the_other_keys_sends(store, trickler):
    key_a, key_b = str(uuid.uuid4()), str(uuid.uuid4())
    sender = make_sender(store, timeout_s=3.0, per_key=1)
    slow = finished_job(store, trickler.url, owner=key_a)
    first = due(store, slow)
    holding = threading.Thread(target=sender.deliver, args=(first.delivery_id, first.attempts), daemon=True)
    holding.start()
    while not sender._sending:  # the slow send has its slot
        holding.join(0.01)
    with Receiver() as receiver:
        second = finished_job(store, trickler.url, owner=key_a)
        other = finished_job(store, f"{receiver.url}/b", owner=key_b)
        put_off, served = due(store, second, other)
        assert sender.deliver(put_off.delivery_id, put_off.attempts) is None  # over key A's cap
        assert view(store, second).status == "pending" and view(store, second).attempts == 0
        assert sender.deliver(served.delivery_id, served.attempts) == "delivered"
    holding.join(10)
    assert view(store, slow).attempts == 1
