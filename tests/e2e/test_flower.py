"""Flower, run as the README and compose run it (`celery -A workers.flower_app flower`), against the
test broker: it lists every stage queue with its depth over all priority lists, and counts the
stage tasks whose events the worker side sends (through workers.task_events)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.cluster import REPO, free_port

PIPELINE = """\
name: flowerq
description: A stage no worker serves, so what is published stays in its queue.
inputs:
  prompt: {type: text}
outputs:
  text: wait.text
stages:
  wait:
    engine: tests.fixtures.engines:ECHO
    inputs: {prompt: job.prompt}
"""


@pytest.fixture(scope="module")
def flower(settings_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flower-pipelines")
    (folder / "flowerq.yaml").write_text(PIPELINE)
    paths = os.pathsep.join(p for p in (settings_env.get("OMNIJOBS_PIPELINES_PATH", ""), str(folder)) if p)
    env = {**os.environ, **settings_env, "OMNIJOBS_PIPELINES_PATH": paths, "PYTHONPATH": str(REPO),
           "FLOWER_UNAUTHENTICATED_API": "true"}
    port = free_port()
    log = folder / "flower.log"
    celery = [sys.executable, "-m", "celery"]
    with open(log, "wb") as out:
        args = [*celery, "-A", "workers.flower_app", "flower", f"--port={port}", "--address=127.0.0.1"]
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"flower exited with {proc.returncode}:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"flower not up:\n{log.read_text()}"
            time.sleep(0.3)
        yield {"url": url, "env": env, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _settings(env):
    from omnijobs.settings import Settings

    return Settings(**{k.removeprefix("OMNIJOBS_").lower(): v for k, v in env.items()
                       if k.startswith("OMNIJOBS_") and not k.startswith("OMNIJOBS_TEST_")})


def test_flower_lists_every_stage_queue_with_its_depth(flower):
    import redis

    from omnijobs.admission import queue_keys
    from omnijobs.messages import StageTask
    from omnijobs.pipelines import load_registry
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    settings = _settings(flower["env"])
    queue = "omni.flowerq.wait"
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(*queue_keys(queue))
    try:
        publisher = CeleryPublisher(make_celery(settings))
        publisher.publish([StageTask(f"run-{i}", 0, queue, priority) for i, priority in enumerate((0, 0, 9, 5))])
        lengths = {q["name"]: q["messages"] for q in
                   httpx.get(f"{flower['url']}/api/queues/length", timeout=10).json()["active_queues"]}
        stages = [spec.queue(name) for spec in load_registry(settings.pipelines_path).all() for name in spec.stages]
        assert set(stages) <= set(lengths), sorted(set(stages) - set(lengths))
        assert "celery" not in lengths  # no queue nobody uses
        assert lengths[queue] == 4  # every priority list, not only the base one
    finally:
        broker.delete(*queue_keys(queue))


def test_flower_counts_stage_tasks_from_their_events(flower):
    from omnijobs.messages import STAGE_TASK
    from workers.celery_app import make_celery
    from workers.task_events import TaskEvents

    events = TaskEvents(make_celery(_settings(flower["env"])), hostname="flowerq.wait@test-host")
    try:
        # Events are not stored: wait until Flower's receiver is listening (it sees a probe task).
        deadline = time.monotonic() + 60
        while True:
            probe = str(uuid.uuid4())
            events.received([probe], STAGE_TASK, "omni.flowerq.wait", [["probe", 0]])
            time.sleep(0.5)
            if probe in httpx.get(f"{flower['url']}/api/tasks", timeout=10).json():
                break
            assert time.monotonic() < deadline, flower["log"].read_text()

        ok, bad = [str(uuid.uuid4()) for _ in range(3)], str(uuid.uuid4())
        events.received([*ok, bad], STAGE_TASK, "omni.flowerq.wait", [[t, 0] for t in [*ok, bad]])
        events.started([*ok, bad])
        events.succeeded(ok)
        events.failed([bad], "FatalStageError('model rejected it')")
        events.heartbeat(processed=4)
        deadline = time.monotonic() + 30
        while True:
            tasks = httpx.get(f"{flower['url']}/api/tasks", timeout=10).json()
            states = {t: tasks.get(t, {}).get("state") for t in [*ok, bad]}
            if states == {**dict.fromkeys(ok, "SUCCESS"), bad: "FAILURE"}:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.3)
        assert all(tasks[t]["name"] == STAGE_TASK and tasks[t]["worker"] == "flowerq.wait@test-host" for t in ok)
        assert "model rejected" in tasks[bad]["exception"]
    finally:
        events.close()


def test_flower_counts_the_runs_a_real_worker_takes(flower):
    """A stage worker with OMNIJOBS_TASK_EVENTS (as compose runs them) announces each message it takes."""
    from tests.cluster import Cluster, wait_job
    from tests.conftest import ARTIFACTS

    # flowerq's queue is this module's alone: no other test cluster's worker can take its messages.
    env = {k: v for k, v in flower["env"].items() if k.startswith("OMNIJOBS_")}
    cluster = Cluster({**env, "OMNIJOBS_TASK_EVENTS": "true"}, ARTIFACTS / "e2e-flower-worker-logs")
    try:
        cluster.wait_workers_ready([cluster.start_worker("flowerq.wait")])
        cluster.start_api()
        with cluster.client() as http:
            job = wait_job(http, http.post("/v1/jobs", json={"pipeline": "flowerq", "inputs": {"prompt": "fl"}})
                           .json()["id"], timeout=60)
        assert job["status"] == "succeeded"
        run_id = job["stages"][0]["id"]
        deadline = time.monotonic() + 30
        while True:
            tasks = httpx.get(f"{flower['url']}/api/tasks", timeout=10).json()
            mine = [t for t in tasks.values() if run_id in str(t.get("args"))]
            if mine and mine[0].get("state") == "SUCCESS":
                break
            assert time.monotonic() < deadline, (mine, flower["log"].read_text()[-2000:])
            time.sleep(0.3)
        assert mine[0]["name"] == "omnijobs.run_stage" and "flowerq.wait@" in mine[0]["worker"]
    finally:
        cluster.stop()
