"""Webhooks end to end: API, stage worker, `omnijobs webhooks` and a real receiver verifying with
the `standardwebhooks` package."""

from __future__ import annotations

import json
import signal
import time

import pytest
from standardwebhooks.webhooks import Webhook

from omnijobs.webhooks.signing import new_secret
from tests.cluster import Cluster, free_port, wait_job
from tests.conftest import ARTIFACTS
from tests.webhook_receiver import Receiver

DEPLOYMENT_SECRET = new_secret()


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def hooks(cluster, settings_env):
    """An API that accepts 127.0.0.1 webhooks, and the webhook process; stage workers come from `cluster`."""
    env = {**settings_env, "OMNIJOBS_WEBHOOK_SECRET": DEPLOYMENT_SECRET,
           "OMNIJOBS_ALLOWED_PRIVATE_HOSTS": "127.0.0.1", "OMNIJOBS_WEBHOOK_RETRY_SCHEDULE_S": "[0.5, 0.5, 2, 2]",
           "OMNIJOBS_WEBHOOK_JITTER": "0", "OMNIJOBS_WEBHOOK_RELAY_INTERVAL_S": "0.2"}
    c = Cluster(env, ARTIFACTS / "e2e-webhooks-logs")
    try:
        c.start_api()
        proc = c._spawn("webhooks", ["webhooks"])
        c.wait_workers_ready([(proc, c.log_dir / "webhooks.log", 0)])
        yield c
    finally:
        if "webhooks" in c.procs:  # deliveries survive a hard stop; a warm one waits out retries
            c.kill("webhooks", signal.SIGKILL)
        c.stop()


def secret_of(hooks) -> str:
    # Jobs of an API key are signed with that key's secret; jobs without an owner with the deployment's.
    return (getattr(hooks, "admin_key", None) or {}).get("webhook_secret") or DEPLOYMENT_SECRET


def submit(http, url, **extra) -> str:
    resp = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "hook"}, "webhook": url, **extra})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_receiver_failing_first_gets_the_event_verified(hooks, receiver):
    receiver.scripts["/flaky"] = [500, 503, 200]
    with hooks.client() as http:
        job_id = submit(http, f"{receiver.url}/flaky")
        job = wait_job(http, job_id, timeout=60)
        got = receiver.wait_for("/flaky", 3)
        assert len({r.headers["webhook-id"] for r in got}) == 1  # one event, three attempts
        event = Webhook(secret_of(hooks)).verify(got[-1].body, got[-1].headers)
        assert event["type"] == "job.succeeded"
        assert {k: event["data"][k] for k in ("id", "status", "outputs")} == {
            "id": job_id, "status": "succeeded", "outputs": job["outputs"]}
        deadline = time.monotonic() + 10
        while (log := http.get(f"/v1/jobs/{job_id}/deliveries").json()["data"])[0]["status"] != "delivered":
            assert time.monotonic() < deadline, log
            time.sleep(0.1)
        (delivery,) = log
        assert delivery["webhook_id"] == got[0].headers["webhook-id"] and delivery["attempts"] == 3
        assert [a["status_code"] for a in delivery["log"]] == [500, 503, 200]
        assert all(a["latency_ms"] is not None for a in delivery["log"])


def test_receiver_down_then_up_gets_the_event(hooks):
    port = free_port()
    with hooks.client() as http:
        job_id = submit(http, f"http://127.0.0.1:{port}/late")  # nothing listens there yet
        deadline = time.monotonic() + 60
        while len(log := http.get(f"/v1/jobs/{job_id}/deliveries").json()["data"][:1]) < 1 or log[0]["attempts"] < 2:
            assert time.monotonic() < deadline, log
            time.sleep(0.1)
        assert log[0]["log"][0]["status_code"] is None and "Connect" in log[0]["log"][0]["error"]
        with Receiver(port=port) as late:
            (got,) = late.wait_for("/late", 1, timeout=30)
            event = Webhook(secret_of(hooks)).verify(got.body, got.headers)
            assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id
            assert got.headers["webhook-id"] == log[0]["webhook_id"]


def test_410_stops_retries(hooks, receiver):
    receiver.scripts["/gone"] = [410]
    with hooks.client() as http:
        job_id = submit(http, f"{receiver.url}/gone")
        receiver.wait_for("/gone", 1, timeout=60)
        time.sleep(2.0)  # four retry periods of this cluster's schedule
        assert len(receiver.at("/gone")) == 1
        (delivery,) = http.get(f"/v1/jobs/{job_id}/deliveries").json()["data"]
        assert delivery["status"] == "stopped" and delivery["last_status_code"] == 410


def test_events_filter_and_manual_redelivery(hooks, receiver):
    with hooks.client() as http:
        job_id = submit(http, f"{receiver.url}/all",
                        webhook_events_filter=["job.started", "job.stage_completed", "job.succeeded"])
        got = receiver.wait_for("/all", 3, timeout=60)
        secret = secret_of(hooks)
        types = sorted(Webhook(secret).verify(r.body, r.headers)["type"] for r in got)
        assert types == ["job.stage_completed", "job.started", "job.succeeded"]
        stage_event = next(json.loads(r.body) for r in got if "stage_completed" in r.body)
        assert stage_event["stage"] == "say"
        deliveries = http.get(f"/v1/jobs/{job_id}/deliveries").json()["data"]
        done = next(d for d in deliveries if d["event"] == "job.succeeded")
        resp = http.post(f"/v1/jobs/{job_id}/deliveries/{done['id']}/redeliver")
        assert resp.status_code == 202, resp.text
        again = receiver.wait_for("/all", 4, timeout=30)[-1]
        assert again.headers["webhook-id"] == done["webhook_id"]
        Webhook(secret).verify(again.body, again.headers)
        missing = http.post(f"/v1/jobs/{job_id}/deliveries/00000000-0000-4000-8000-000000000000/redeliver")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "delivery_id"


@pytest.mark.parametrize("url", ["http://10.0.0.7/hook", "http://169.254.169.254/latest", "http://192.168.1.1/x",
                                 "file:///etc/passwd"])
def test_private_or_odd_webhook_refused_at_submit(hooks, url):
    with hooks.client() as http:
        before = len(http.get("/v1/jobs", params={"limit": 100}).json()["data"])
        resp = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "x"}, "webhook": url})
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "webhook", resp.text
        bad_filter = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "x"},
                                                 "webhook": "http://127.0.0.1:9/h", "webhook_events_filter": ["x"]})
        assert bad_filter.status_code == 422 and bad_filter.json()["error"]["field"] == "webhook_events_filter"
        assert len(http.get("/v1/jobs", params={"limit": 100}).json()["data"]) == before  # nothing written
