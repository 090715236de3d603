"""The stage consumer and the broker: a Redis restart with the shipped settings, and a batch that
could not be claimed. Runs its own Redis server (restarted here) and its own database.

With the shipped settings the reconciler republishes a lost message only after
`OMNIJOBS_REQUEUE_AFTER_S` (300 s), so a job that finishes within the wait below was consumed
from its first message: nothing had to be re-armed after the reconnect.
"""

from __future__ import annotations

import threading

import pytest

from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS, FIXTURE_PIPELINES
from tests.private_services import PrivateRedis
from tests.services import create_database, drop_database, require_postgres


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    admin = require_postgres()
    db_url = create_database(admin)
    from omnijobs.store.migrate import upgrade

    upgrade(db_url)
    log_dir = ARTIFACTS / "e2e-broker-reconnect-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    broker = PrivateRedis(log_dir / "redis.log")
    broker.start()
    tmp = tmp_path_factory.mktemp("reconnect")
    # Shipped durability settings (no short republish age): only what the test needs is set.
    env = {"OMNIJOBS_PIPELINES_PATH": str(FIXTURE_PIPELINES), "OMNIJOBS_MODELS_DIR": str(tmp / "models"),
           "OMNIJOBS_ARTIFACTS_DIR": str(tmp / "artifacts"), "OMNIJOBS_TORCH_THREADS": "1",
           "OMNIJOBS_DATABASE_URL": db_url, "OMNIJOBS_BROKER_URL": broker.url}
    c = Cluster(env, log_dir)
    for name in ("OMNIJOBS_REQUEUE_AFTER_S", "OMNIJOBS_RECONCILE_INTERVAL_S", "OMNIJOBS_LEASE_GRACE_S"):
        c.env.pop(name, None)
    try:
        c.wait_workers_ready([c.start_worker("echo.say")])
        c.start_api()
        c.start_reconciler()
        yield c, broker
    finally:
        for name in list(c.procs):
            c.kill(name)
        broker.stop()
        drop_database(admin, db_url)


def test_lone_job_after_a_redis_restart_runs_without_a_republish(stack):
    c, broker = stack
    with c.client() as http:
        first = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "before"}}).json()["id"]
        assert wait_job(http, first, timeout=30)["status"] == "succeeded"
        broker.stop()
        broker.start()  # same port, empty: every connection of every process was cut
        log = c.log_dir / "worker-echo.say.log"
        Cluster._wait(lambda: b"reconnecting" in log.read_bytes(), "worker noticing the restart", 30)
        # The worker reconnects on its own; the API's publish may need one retry of its own.
        job_id = None
        for _ in range(50):
            resp = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "alone"}})
            if resp.status_code == 202:
                job_id = resp.json()["id"]
                break
            threading.Event().wait(0.2)
        assert job_id, resp.text
        job = wait_job(http, job_id, timeout=60)  # far below the 300 s republish age
        assert job["status"] == "succeeded" and job["outputs"]["text"] == "say(alone)"
        assert job["stages"][0]["attempt"] == 1 and job["stages"][0]["batch_size"] == 1
