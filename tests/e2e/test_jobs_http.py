"""A job through HTTP, Postgres, Redis and real stage worker processes."""

from __future__ import annotations

import json
import os
from collections import Counter

from omnijobs.messages import StageTask
from tests.cluster import wait_job


def test_chat_job_succeeds_with_timings(client):
    resp = client.post("/v1/jobs", json={"pipeline": "chat", "inputs": {"prompt": "Say hello"},
                                         "params": {"max_tokens": 6}})
    assert resp.status_code == 202, resp.text
    created = resp.json()
    assert created["status"] == "queued"
    assert resp.headers["location"].endswith(f"/v1/jobs/{created['id']}")

    job = wait_job(client, created["id"])
    assert job["status"] == "succeeded", job
    assert isinstance(job["outputs"]["text"], str) and job["outputs"]["text"].strip()
    (stage,) = job["stages"]
    assert stage["name"] == "generate" and stage["status"] == "succeeded" and stage["attempt"] == 1
    assert stage["started_at"] and stage["finished_at"] and stage["run_s"] is not None
    assert stage["worker"].startswith("chat.generate@") and stage["batch_size"] >= 1
    assert 1 <= stage["outputs"]["usage"]["completion_tokens"] <= 6
    assert job["started_at"] <= job["finished_at"] and job["metrics"]["total_s"] > 0


def test_two_stage_pipeline_hands_draft_to_rewrite(client):
    resp = client.post("/v1/jobs", json={
        "pipeline": "draft_rewrite", "inputs": {"prompt": "Write about the sea"},
        "params": {"draft": {"max_tokens": 5, "seed": 1, "ignore_eos": True}, "rewrite": {"max_tokens": 4}},
    })
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["id"])
    assert job["status"] == "succeeded", job
    draft, rewrite = job["stages"]
    assert (draft["name"], rewrite["name"]) == ("draft", "rewrite")
    assert draft["outputs"]["usage"]["completion_tokens"] == 5
    # The rewrite stage's recorded input is exactly what the draft stage produced.
    assert rewrite["inputs"]["prompt"] == draft["outputs"]["text"] == job["outputs"]["draft"]
    assert rewrite["inputs"]["system"] == "Rewrite the text to be clearer."
    assert rewrite["started_at"] >= draft["finished_at"]
    assert job["outputs"]["text"] == rewrite["outputs"]["text"]


def test_sixteen_jobs_batch_without_cross_talk(client):
    jobs = []
    for i in range(16):
        params = {"max_tokens": 3 + i % 5, "seed": 100 + i, "temperature": 1.0, "ignore_eos": True}
        body = {"pipeline": "chat", "inputs": {"prompt": f"job number {i}"}, "params": params}
        resp = client.post("/v1/jobs", json=body)
        assert resp.status_code == 202, resp.text
        jobs.append((resp.json()["id"], body))
    done = [(wait_job(client, job_id), body) for job_id, body in jobs]
    sizes = [job["stages"][0]["batch_size"] for job, _ in done]
    assert all(job["status"] == "succeeded" for job, _ in done)
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 64, sizes  # the stage's max_size
    batches = Counter(job["stages"][0]["batch_id"] for job, _ in done)
    assert all(n == next(j for j, _ in done if j["stages"][0]["batch_id"] == b)["stages"][0]["batch_size"]
               for b, n in batches.items())
    # Each job honoured its own params: exact length, and the same tokens when run again alone.
    for job, body in done:
        assert job["stages"][0]["outputs"]["usage"]["completion_tokens"] == body["params"]["max_tokens"]
    for job, body in done[:3]:
        again = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
        assert again["stages"][0]["outputs"]["token_ids"] == job["stages"][0]["outputs"]["token_ids"]
    distinct = {tuple(job["stages"][0]["outputs"]["token_ids"]) for job, _ in done}
    assert len(distinct) > 8  # different seeds really sampled differently


def test_duplicate_delivery_runs_the_stage_once(cluster, client, store, settings, settings_env):
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    spec = store.pipelines.get("echo")
    job, tasks, _ = store.create_job(spec, {"prompt": "twice"}, {})
    publisher = CeleryPublisher(make_celery(settings))
    (task,) = tasks
    publisher.publish([task, task, StageTask(task.run_id, task.attempt, task.queue)])
    done = wait_job(client, str(job.id))
    assert done["status"] == "succeeded" and done["outputs"]["text"] == "say(twice)"
    assert done["stages"][0]["attempt"] == 1
    runs = _engine_runs(settings_env, task.run_id)
    assert len(runs) == 1, runs
    # A late copy of the message after completion is also a no-op.
    publisher.publish([task])
    wait_job(client, str(job.id))
    import time

    time.sleep(1.0)
    assert len(_engine_runs(settings_env, task.run_id)) == 1


def test_failing_stage_is_retried_then_fails_job_and_worker_survives(client, settings_env):
    resp = client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "boom now"}})
    failed = wait_job(client, resp.json()["id"])
    assert failed["status"] == "failed", failed
    stage = failed["stages"][0]
    assert stage["status"] == "failed" and stage["attempt"] == 2 == stage["max_attempts"]
    assert [e["attempt"] for e in stage["errors"]] == [1, 2]
    assert all("engine exploded" in e["message"] for e in stage["errors"])
    assert failed["error"]["stage"] == "say" and "engine exploded" in failed["error"]["message"]
    assert len(_engine_runs(settings_env, stage_id(failed))) == 2

    fatal = wait_job(client, client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "fatal"}}).json()["id"])
    assert fatal["status"] == "failed" and fatal["stages"][0]["attempt"] == 1  # not retried
    assert fatal["error"]["code"] == "fatal"

    ok = wait_job(client, client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "fine"}}).json()["id"])
    assert ok["status"] == "succeeded" and ok["outputs"]["text"] == "say(fine)"


def test_cancel_queued_job_never_runs(client, store, settings_env):
    spec = store.pipelines.get("echo")
    job, tasks, _ = store.create_job(spec, {"prompt": "never"}, {})  # not published yet
    resp = client.post(f"/v1/jobs/{job.id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    from workers.celery_app import make_celery  # a message that still arrives must not run it
    from workers.publisher import CeleryPublisher
    from omnijobs.settings import Settings

    CeleryPublisher(make_celery(Settings(broker_url=settings_env["OMNIJOBS_BROKER_URL"]))).publish(tasks)
    import time

    time.sleep(1.0)
    assert client.get(f"/v1/jobs/{job.id}").json()["stages"][0]["status"] == "canceled"
    assert _engine_runs(settings_env, tasks[0].run_id) == []
    assert client.post(f"/v1/jobs/{job.id}/cancel").status_code == 409


def test_list_jobs_filters_and_cursor(client):
    ids = [client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": f"list {i}"}}).json()["id"]
           for i in range(5)]
    for job_id in ids:
        wait_job(client, job_id)
    seen, cursor = [], None
    while len(seen) < 5:
        page = client.get("/v1/jobs", params={"pipeline": "echo", "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200
        body = page.json()
        seen += [j["id"] for j in body["data"]]
        cursor = body["next_cursor"]
        assert cursor
    assert seen[:5] == list(reversed(ids))  # newest first, no duplicates across pages
    failed = client.get("/v1/jobs", params={"status": "failed"}).json()["data"]
    assert all(j["status"] == "failed" for j in failed)
    assert client.get("/v1/jobs", params={"status": "nope"}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "garbage!"}).status_code == 422


def test_events_stream_ends_with_final_job(client):
    job_id = client.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": "sse"}}).json()["id"]
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            if line.startswith("data: ") and events[-1] == "end":
                final = json.loads(line.removeprefix("data: "))
                break
    assert events[0] == "status" and "stage" in events and events[-1] == "end"
    assert final["status"] == "succeeded"


def test_pipelines_and_health(client):
    names = [p["name"] for p in client.get("/v1/pipelines").json()["data"]]
    assert {"chat", "draft_rewrite"} <= set(names)
    chat = client.get("/v1/pipelines/chat").json()
    assert chat["inputs"]["prompt"]["type"] == "text"
    assert chat["stages"][0]["queue"] == "omni.chat.generate"
    assert client.get("/v1/pipelines/nope").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def stage_id(job: dict) -> str:
    return job["stages"][0]["id"]


def _engine_runs(settings_env, run_id: str) -> list[dict]:
    path = settings_env["OMNIJOBS_TEST_ENGINE_LOG"]
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["run_id"] == run_id]
