"""The batching consumer against a real Redis server of its own: batches form from what is waiting,
a batch that could not be claimed goes back on the queue, held (ETA) messages wait without blocking."""

from __future__ import annotations

import threading
import time

import pytest

from omnijobs.messages import StageTask
from omnijobs.settings import Settings
from tests.conftest import ARTIFACTS
from tests.private_services import PrivateRedis
from workers.celery_app import make_celery
from workers.consumer import BatchConsumer, ClaimUnavailable
from workers.publisher import CeleryPublisher

QUEUE = "omni.test.consumer"


@pytest.fixture(scope="module")
def broker():
    log_dir = ARTIFACTS / "consumer-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis(log_dir / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app(broker):
    import redis

    redis.Redis.from_url(broker.url).flushdb()
    return make_celery(Settings(broker_url=broker.url))


def publish(app, *tasks: tuple[str, float]) -> None:
    CeleryPublisher(app).publish([StageTask(run_id, 0, QUEUE, delay_s=delay) for run_id, delay in tasks])


class Recorder:
    """A handle that records each batch; it can refuse the first N batches as unclaimable."""

    def __init__(self, refuse: int = 0, stop_after: int = 0, stop: threading.Event | None = None):
        self.batches: list[list[str]] = []
        self.refuse = refuse
        self.stop_after = stop_after
        self.stop = stop

    def __call__(self, deliveries) -> None:
        ids = [d.run_id for d in deliveries]
        if self.refuse:
            self.refuse -= 1
            self.batches.append(["refused", *ids])
            raise ClaimUnavailable("the store is down")
        self.batches.append(ids)
        if sum(len(b) for b in self.batches if b[:1] != ["refused"]) >= self.stop_after:
            self.stop.set()


def consume(app, recorder: Recorder, stop: threading.Event, max_size: int = 4, timeout: float = 30) -> None:
    consumer = BatchConsumer(app, QUEUE, max_size=max_size, max_wait_ms=50, handle=recorder, stop=stop)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    thread.join(timeout)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_waiting_messages_form_full_batches_and_the_rest_goes_at_once(app):
    publish(app, *[(f"r{i}", 0.0) for i in range(10)])
    stop = threading.Event()
    recorder = Recorder(stop_after=10, stop=stop)
    consume(app, recorder, stop)
    assert [len(b) for b in recorder.batches] == [4, 4, 2]
    assert sorted(i for b in recorder.batches for i in b) == sorted(f"r{i}" for i in range(10))


def test_a_batch_that_could_not_be_claimed_is_delivered_again(app):
    publish(app, ("a", 0.0), ("b", 0.0))
    stop = threading.Event()
    recorder = Recorder(refuse=1, stop_after=2, stop=stop)
    consume(app, recorder, stop)
    assert recorder.batches[0][0] == "refused"
    assert sorted(i for b in recorder.batches[1:] for i in b) == ["a", "b"]


def test_a_held_message_waits_for_its_eta_without_holding_up_due_ones(app):
    publish(app, ("later", 1.5))
    publish(app, ("now", 0.0))
    stop = threading.Event()
    recorder = Recorder(stop_after=2, stop=stop)
    started = time.time()
    consume(app, recorder, stop)
    assert recorder.batches == [["now"], ["later"]]
    assert time.time() - started >= 1.4  # "later" was not run before its ETA
