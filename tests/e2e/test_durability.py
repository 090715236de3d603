"""Durability under faults, with real processes: stage workers kill -9'ed at random, the broker
flushed and restarted, the API restarted, every message delivered twice. Every job must end
`succeeded`, each stage result recorded once, no lease left behind, no shared memory leaked.

This module runs its own Redis server (it is flushed and restarted here) and its own database.
Artifacts go through shared memory (OMNIJOBS_ARTIFACTS=shm, every value by reference).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from omnijobs.artifacts.shm import ShmConnector
from tests.cluster import FINAL, REPO, Cluster
from tests.conftest import ARTIFACTS, FIXTURE_PIPELINES
from tests.private_services import PrivateRedis
from tests.services import create_database, drop_database, require_postgres

STAGES = ("chain.a", "chain.b", "chain.c")
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """(cluster, database engine, redis server, engine log) with a worker per chain stage, the API and the reconciler."""
    admin = require_postgres()
    db_url = create_database(admin)
    from omnijobs.store.migrate import upgrade

    upgrade(db_url)
    log_dir = ARTIFACTS / "e2e-durability-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    broker = PrivateRedis(log_dir / "redis.log")
    broker.start()
    tmp = tmp_path_factory.mktemp("durability")
    engine_log = tmp / "runs.jsonl"
    # The chain pipeline needs no models: this module does not wait for the session's tiny-model build.
    env = {"OMNIJOBS_PIPELINES_PATH": str(FIXTURE_PIPELINES), "OMNIJOBS_MODELS_DIR": str(tmp / "models"),
           "OMNIJOBS_ARTIFACTS_DIR": str(tmp / "artifacts"), "OMNIJOBS_TORCH_THREADS": "1",
           "OMNIJOBS_DATABASE_URL": db_url, "OMNIJOBS_BROKER_URL": broker.url,
           "OMNIJOBS_ARTIFACTS": "shm", "OMNIJOBS_INLINE_MAX_BYTES": "1", "OMNIJOBS_TEST_ENGINE_LOG": str(engine_log),
           "OMNIJOBS_LEASE_GRACE_S": "3", "OMNIJOBS_REQUEUE_AFTER_S": "3", "OMNIJOBS_RECONCILE_INTERVAL_S": "0.5",
           "OMNIJOBS_RETRY_BACKOFF_S": "0.2", "OMNIJOBS_RATE_LIMIT_PER_S": "0"}
    c = Cluster(env, log_dir)
    db = sa.create_engine(db_url)
    try:
        started = [c.start_worker(stage) for stage in STAGES]
        c.start_api()
        c.start_reconciler()
        c.wait_workers_ready(started)
        yield c, db, broker, engine_log
    finally:
        for name in list(c.procs):  # no warm shutdown: these processes are here to be killed anyway
            c.kill(name)
        db.dispose()
        broker.stop()
        drop_database(admin, db_url)
        if FIGURES:
            print("\nfault-test figures: " + json.dumps(FIGURES))


def submit(c: Cluster, n: int, tag: str) -> list[str]:
    with c.client() as http:
        ids = []
        for i in range(n):
            resp = http.post("/v1/jobs", json={"pipeline": "chain", "inputs": {"prompt": f"{tag}-{i}"}})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
    return ids


def wait_final(db: sa.Engine, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with db.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status NOT IN :final")
                                .bindparams(sa.bindparam("final", expanding=True)),
                                {"ids": ids, "final": list(FINAL)}).scalar()
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of {len(ids)} jobs not final after {timeout}s")
        time.sleep(0.2)


def check_recorded_once(db: sa.Engine, ids: list[str], tag: str, engine_log: Path) -> dict:
    """Every job succeeded with the right output; each stage ran to success once; nothing left running."""
    with db.connect() as conn:
        jobs = conn.execute(sa.text("SELECT id::text, status, inputs, outputs FROM jobs WHERE id = ANY(:ids)"),
                            {"ids": ids}).all()
        runs = conn.execute(sa.text(
            "SELECT id::text, job_id::text, stage, status, attempt, max_attempts, errors, lease_until, outputs "
            "FROM stage_runs WHERE job_id = ANY(:ids)"), {"ids": ids}).all()
    assert len(jobs) == len(ids)
    assert Counter(j.status for j in jobs) == {"succeeded": len(ids)}
    for j in jobs:
        assert j.outputs["text"].get("artifact", "").startswith("file://"), j.outputs  # final output kept durably
    assert len(runs) == 3 * len(ids)
    assert Counter((r.job_id, r.stage) for r in runs).most_common(1)[0][1] == 1
    for r in runs:
        assert r.status == "succeeded" and r.lease_until is None, r
        assert 1 <= r.attempt <= r.max_attempts
        # Every attempt before the one that counted is explained by one recorded failure.
        assert len(r.errors) == r.attempt - 1, r.errors
    executions = Counter()
    for line in engine_log.read_text().splitlines():
        executions[json.loads(line)["run_id"]] += 1
    mine = {r.id for r in runs}
    ran = {k: v for k, v in executions.items() if k in mine}
    assert set(ran) == mine  # every run was executed by an engine
    return {"jobs": len(ids), "runs": len(runs), "retried_attempts": sum(r.attempt - 1 for r in runs),
            "engine_executions": sum(ran.values()), "lost": 0,
            "failed_attempts_by_code": dict(Counter(e["code"] for r in runs for e in r.errors))}


def shm_segments(ids: list[str]) -> list[str]:
    shm = ShmConnector()
    return [seg for job_id in ids for seg in shm.list_segments(job_id)]


def expire_now(c: Cluster) -> None:
    """One reconciler pass with a retention of ~0: every finished job's artifacts are deleted."""
    subprocess.run([sys.executable, "-m", "omnijobs", "reconciler", "--once"], cwd=REPO, check=True, timeout=60,
                   env={**c.env, "OMNIJOBS_RETENTION_S": "0.001"}, capture_output=True)


def wait_no_segments(ids: list[str], timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := shm_segments(ids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_kill_workers_at_random_every_job_succeeds_once(faults):
    c, db, _, engine_log = faults
    rng = random.Random(5)
    ids = submit(c, 120, "kill")
    kills, starting = 0, {}
    while kills < 5:
        time.sleep(rng.uniform(0.6, 1.2))
        stage = rng.choice(STAGES)
        if stage in starting:  # kill workers that are at work, not ones still starting
            c.wait_workers_ready([starting.pop(stage)])
        c.kill(f"worker-{stage}")  # SIGKILL to the worker's process group, wherever it is in its batch
        kills += 1
        starting[stage] = c.start_worker(stage)
    c.wait_workers_ready(list(starting.values()))
    wait_final(db, ids, timeout=120)
    figures = check_recorded_once(db, ids, "kill", engine_log)
    assert figures["retried_attempts"] >= 1  # the kills did land mid-batch
    # NOTE: a worker killed after it wrote a segment but before it recorded it, or after it ended a job
    # but before it freed the job's intermediates, leaves segments behind; they are counted here, and
    # the retention pass (which sweeps each finished job's prefix) must free every one of them. It
    # also marks the outputs expired: downloads then answer 410.
    left = wait_no_segments(ids, timeout=3)
    expire_now(c)
    assert shm_segments(ids) == []
    with c.client() as http:
        assert http.get(f"/v1/jobs/{ids[0]}/outputs/text").status_code == 410
        assert http.get(f"/v1/jobs/{ids[0]}").json()["status"] == "succeeded"
    FIGURES["kill"] = {**figures, "kills": kills, "shm_segments_left_until_retention": len(left),
                       "shm_segments_after_retention": 0}


def test_broker_flushed_then_restarted_every_job_ends(faults):
    c, db, broker, engine_log = faults
    ids = submit(c, 40, "flush")
    time.sleep(0.5)
    client = redis.Redis.from_url(broker.url)
    assert client.dbsize() > 0  # messages in queues or held unacknowledged by workers
    client.flushall()  # every one of them gone
    time.sleep(1.0)
    broker.stop()  # and then the server itself
    time.sleep(0.5)
    broker.start()  # same port, empty
    wait_final(db, ids, timeout=90)
    figures = check_recorded_once(db, ids, "flush", engine_log)
    assert wait_no_segments(ids) == []
    FIGURES["broker_loss"] = figures


def test_api_restart_between_submit_and_completion_loses_nothing(faults):
    c, db, _, engine_log = faults
    c.kill("worker-chain.a")  # hold every job before its first stage
    ids = submit(c, 20, "api")
    c.kill("api")
    worker = c.start_worker("chain.a")
    c.start_api()
    c.wait_workers_ready([worker])
    wait_final(db, ids, timeout=60)
    with c.client() as http:
        assert {http.get(f"/v1/jobs/{i}").json()["status"] for i in ids} == {"succeeded"}
    FIGURES["api_restart"] = check_recorded_once(db, ids, "api", engine_log)


def test_every_message_delivered_twice_results_recorded_once(faults):
    c, db, broker, engine_log = faults
    from omnijobs.messages import StageTask
    from omnijobs.settings import Settings
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    publisher = CeleryPublisher(make_celery(Settings(broker_url=broker.url)))
    for stage in STAGES:
        c.kill(f"worker-{stage}")
    ids = submit(c, 30, "dup")
    duplicated = 0
    for stage in STAGES:
        name = stage.split(".")[1]
        with db.connect() as conn:
            queued = conn.execute(sa.text(
                "SELECT r.id::text, r.attempt, r.queue FROM stage_runs r WHERE r.job_id = ANY(:ids) "
                "AND r.stage = :stage AND r.status = 'queued'"), {"ids": ids, "stage": name}).all()
        assert len(queued) == len(ids)
        publisher.publish([StageTask(r.id, r.attempt, r.queue) for r in queued])  # a second copy of each
        duplicated += len(queued)
        c.wait_workers_ready([c.start_worker(stage)])
        deadline = time.monotonic() + 60
        while True:
            with db.connect() as conn:
                done = conn.execute(sa.text("SELECT count(*) FROM stage_runs WHERE job_id = ANY(:ids) "
                                            "AND stage = :stage AND status = 'succeeded'"),
                                    {"ids": ids, "stage": name}).scalar()
            if done == len(ids):
                break
            assert time.monotonic() < deadline, f"{stage}: {done} of {len(ids)}"
            time.sleep(0.1)
    wait_final(db, ids, timeout=30)
    figures = check_recorded_once(db, ids, "dup", engine_log)
    # A duplicate finds nothing to claim: no run was executed or attempted twice.
    assert figures["engine_executions"] == figures["runs"] and figures["retried_attempts"] == 0
    FIGURES["duplicates"] = {**figures, "duplicated_messages": duplicated}
