"""Faults: a worker killed mid-batch, and the broker losing every message. Every job still ends."""

from __future__ import annotations

import time

import redis

from tests.cluster import wait_job

ECHO_WORKER = "worker-echo.say"


def _restart_echo(cluster) -> None:
    cluster.wait_workers_ready([cluster.start_worker("echo.say", ECHO_WORKER)])


def test_worker_killed_mid_batch_job_still_succeeds(cluster, client):
    job_id = client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "sleep:4"}}).json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job_id}").json()["stages"][0]["status"] != "running":
        assert time.monotonic() < deadline, "the stage never started"
        time.sleep(0.1)
    cluster.kill(ECHO_WORKER)  # SIGKILL to the worker's process group, mid-batch
    _restart_echo(cluster)
    job = wait_job(client, job_id, timeout=90)
    assert job["status"] == "succeeded", job
    stage = job["stages"][0]
    assert stage["attempt"] == 2 and [e["code"] for e in stage["errors"]] == ["lease_expired"]
    assert job["outputs"]["text"] == "say(sleep:4)"


def test_broker_loses_every_message_jobs_still_end(cluster, client, redis_url):
    cluster.kill(ECHO_WORKER)  # nobody consumes: the messages sit in Redis
    ids = [client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": f"lost {i}"}}).json()["id"]
           for i in range(5)]
    broker = redis.Redis.from_url(redis_url)
    # Priorities live in sibling lists: omni.echo.say, omni.echo.say:1 ... omni.echo.say:9.
    assert sum(broker.llen(k) for k in broker.keys("omni.echo.say*") if broker.type(k) == b"list") >= 5
    broker.flushdb()  # the test Redis db: every queued message is gone
    _restart_echo(cluster)
    jobs = [wait_job(client, job_id, timeout=90) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    assert [j["outputs"]["text"] for j in jobs] == [f"say(lost {i})" for i in range(5)]
