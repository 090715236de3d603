"""The admin API against real workers: queue depth, admission, worker registry, stats, failed jobs, metrics.

This module runs its own API (own database, a pipeline of its own) so its numbers are exact: nothing
else publishes to its queue, and no reconciler re-publishes what waits in it.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import isolated_cluster, wait_job
from tests.conftest import ARTIFACTS

BOUND = 8
DEAD_AFTER_S = 3.0
RATE, BURST = 2, 30
MONITOR = """\
name: monitor
description: One echo stage watched by the admin tests.
inputs:
  prompt: {type: text}
outputs:
  text: work.text
stages:
  work:
    engine: tests.fixtures.engines:ECHO
    inputs: {prompt: job.prompt}
    batch: {max_size: 4, max_wait_ms: 100}
    timeout_s: 30
    max_attempts: 2
"""


@pytest.fixture(scope="module")
def admin_cluster(settings_env, tmp_path_factory):
    # "unserved" has no worker and no bound: what is refused there is refused by the rate limit alone.
    unserved = MONITOR.replace("name: monitor", "name: unserved")
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-admin-logs", {"monitor": MONITOR, "unserved": unserved},
                          tmp_path_factory.mktemp("admin-pipelines"),
                          OMNIJOBS_QUEUE_BOUNDS=f'{{"monitor.work": {BOUND}}}', OMNIJOBS_WORKER_HEARTBEAT_S="0.5",
                          OMNIJOBS_WORKER_DEAD_AFTER_S=str(DEAD_AFTER_S),
                          OMNIJOBS_RATE_LIMIT_PER_S=str(RATE), OMNIJOBS_RATE_LIMIT_BURST=str(BURST)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def admin(admin_cluster):
    with admin_cluster.client() as http:
        yield http


def _queue(admin, stage: str) -> dict:
    resp = admin.get("/admin/api/queues")
    assert resp.status_code == 200, resp.text
    return {q["stage"]: q for q in resp.json()["data"]}[stage]


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*{re.escape(want)}[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert m, f"{name}{{{want}}} not in metrics:\n{text[:3000]}"
    return float(m.group(1))


def _monitor_worker(admin, until=lambda w: True, timeout: float = 10) -> dict:
    """The monitor stage's worker once `until` holds: its counters are written just after a batch's jobs end."""
    deadline = time.monotonic() + timeout
    while True:
        (w,) = [w for w in admin.get("/admin/api/workers").json()["data"] if w["stage"] == "monitor.work"]
        if until(w) or time.monotonic() > deadline:
            return w
        time.sleep(0.2)


def _submit(admin, prompt: str, priority: int = 0):
    return admin.post("/v1/jobs", json={"pipeline": "monitor", "inputs": {"prompt": prompt}, "priority": priority})


def test_depth_and_admission_while_no_worker_consumes(admin):
    before = _queue(admin, "monitor.work")
    assert (before["depth"], before["queued"], before["running"], before["workers"]) == (0, 0, 0, 0)
    priorities = [0, 0, 0, 5, 9]
    for i, p in enumerate(priorities):
        assert _submit(admin, f"waiting {i}", p).status_code == 202
    q = _queue(admin, "monitor.work")
    assert (q["depth"], q["queued"], q["running"], q["workers"], q["bound"]) == (5, 5, 0, 0, BOUND)
    assert q["depth_by_priority"] == {"0": 3, "5": 1, "9": 1}
    assert 0 <= q["oldest_wait_s"] < 60
    assert {"echo.say", "chat.generate"} <= {s["stage"] for s in admin.get("/admin/api/queues").json()["data"]}

    # A flood: accepted until the queue holds BOUND, then 429 with Retry-After and nothing written.
    answers = [_submit(admin, f"flood {i}") for i in range(10)]
    codes = [r.status_code for r in answers]
    assert codes == [202] * (BOUND - 5) + [429] * (10 - BOUND + 5), codes
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full" and refused.json()["error"]["field"] == "pipeline"
    q = _queue(admin, "monitor.work")
    assert (q["depth"], q["queued"]) == (BOUND, BOUND)
    listed = admin.get("/v1/jobs", params={"pipeline": "monitor", "limit": 100}).json()["data"]
    assert len(listed) == BOUND

    metrics = admin.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert _metric(metrics.text, "omnijobs_queue_depth", stage="monitor.work") == BOUND
    assert _metric(metrics.text, "omnijobs_jobs", pipeline="monitor", status="queued") == BOUND
    assert _metric(metrics.text, "omnijobs_stage_runs", stage="monitor.work", status="queued") == BOUND


def test_a_worker_drains_the_queue_and_reports_itself(admin_cluster, admin):
    proc, log, offset = admin_cluster.start_worker("monitor.work")
    admin_cluster.wait_workers_ready([(proc, log, offset)])
    jobs = admin.get("/v1/jobs", params={"pipeline": "monitor", "limit": 100}).json()["data"]
    assert all(wait_job(admin, j["id"])["status"] == "succeeded" for j in jobs)

    w = _monitor_worker(admin, lambda w: w["jobs_done"] == BOUND)
    q = _queue(admin, "monitor.work")
    assert (q["depth"], q["queued"], q["running"], q["workers"]) == (0, 0, 0, 1)
    assert q["worker_names"] == [w["name"]]
    assert (w["pid"], w["host"], w["device"], w["state"], w["alive"]) == (proc.pid, socket.gethostname(), "cpu",
                                                                           "alive", True)
    assert w["engine"] == "tests.fixtures.engines:ECHO" and w["queue"] == "omni.monitor.work"
    assert (w["jobs_done"], w["failures"]) == (BOUND, 0)
    assert 2 <= w["batches"] <= BOUND and 1 <= w["batch_size"] <= 4
    assert w["heartbeat_age_s"] < DEAD_AFTER_S

    stats = admin.get("/admin/api/stats", params={"window_s": 300, "bucket_s": 10}).json()
    s = stats["stages"]["monitor.work"]
    assert (s["succeeded"], s["failed"], s["retries"]) == (BOUND, 0, 0)
    assert sum(int(size) * n for size, n in s["batch_sizes"].items()) == BOUND
    assert s["batches"] == w["batches"] and sum(s["series"]) == BOUND and len(s["series"]) == 30
    assert s["throughput_per_s"] == pytest.approx(BOUND / 300, abs=1e-3)
    assert 0 <= s["run_s"]["p50"] <= s["run_s"]["p95"] <= s["run_s"]["p99"]
    assert s["queue_wait_s"]["p99"] > 0  # the first jobs waited for the worker to start
    p = stats["pipelines"]["monitor"]
    assert (p["succeeded"], p["failed"], p["queued"], p["running"]) == (BOUND, 0, 0, 0)

    text = admin.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # parses: the exposition is valid
    assert {"omnijobs_queue_depth", "omnijobs_jobs", "omnijobs_stage_run_seconds", "omnijobs_stage_queue_wait_seconds",
            "omnijobs_batch_size", "omnijobs_worker_up", "omnijobs_webhook_deliveries"} <= set(families)
    assert families["omnijobs_stage_run_seconds"].type == "histogram"
    assert _metric(text, "omnijobs_stage_run_seconds_count", stage="monitor.work") == BOUND
    assert _metric(text, "omnijobs_batch_size_count", stage="monitor.work") == w["batches"]
    assert _metric(text, "omnijobs_batch_size_sum", stage="monitor.work") == BOUND
    assert _metric(text, "omnijobs_worker_up", worker=w["name"]) == 1
    assert _metric(text, "omnijobs_jobs", pipeline="monitor", status="succeeded") == BOUND


def test_failed_jobs_show_every_attempt_and_can_be_retried_or_canceled(admin_cluster, admin):
    failed = wait_job(admin, _submit(admin, "boom now").json()["id"])
    assert failed["status"] == "failed"
    listed = admin.get("/admin/api/jobs", params={"status": "failed"}).json()["data"]
    (entry,) = [j for j in listed if j["id"] == failed["id"]]
    assert entry["owner"] == admin_cluster.admin_key["id"]
    assert [a["attempt"] for a in entry["attempts"]] == [1, 2]
    assert all("engine exploded" in a["message"] and a["stage"] == "work" for a in entry["attempts"])
    assert admin.get(f"/admin/api/jobs/{failed['id']}").json()["attempts"] == entry["attempts"]

    retried = admin.post(f"/admin/api/jobs/{failed['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "queued" and retried.json()["error"] is None
    again = wait_job(admin, failed["id"])
    assert again["status"] == "failed"  # "boom" always fails: the retry ran two more attempts
    attempts = admin.get(f"/admin/api/jobs/{failed['id']}").json()["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert admin.post(f"/admin/api/jobs/{failed['id']}/cancel").status_code == 409  # already final

    done = wait_job(admin, _submit(admin, "fine").json()["id"])
    assert admin.post(f"/admin/api/jobs/{done['id']}/retry").status_code == 409  # only failed jobs
    assert admin.post("/admin/api/jobs/00000000-0000-0000-0000-000000000000/retry").status_code == 404
    assert admin.post("/admin/api/jobs/not-an-id/retry").status_code == 404

    # An admin cancels another key's running job.
    user = admin.post("/admin/api/keys", json={"name": "admin-test-user"}).json()
    with admin_cluster.client(headers={"Authorization": f"Bearer {user['key']}"}) as client:
        slow = client.post("/v1/jobs", json={"pipeline": "monitor", "inputs": {"prompt": "sleep:5"}}).json()
    canceled = admin.post(f"/admin/api/jobs/{slow['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert _monitor_worker(admin, lambda w: w["failures"] == 4)["failures"] == 4


def test_a_killed_worker_shows_as_dead(admin_cluster, admin):
    (name,) = [n for n in admin_cluster.procs if n.startswith("worker-")]
    admin_cluster.kill(name)
    w = _monitor_worker(admin, lambda w: w["state"] == "dead", timeout=DEAD_AFTER_S + 10)
    assert w["state"] == "dead" and w["alive"] is False and w["heartbeat_age_s"] > DEAD_AFTER_S
    assert _queue(admin, "monitor.work")["workers"] == 0
    assert _metric(admin.get("/metrics").text, "omnijobs_worker_up", worker=w["name"]) == 0


def test_a_key_over_its_rate_gets_429_and_others_do_not(admin_cluster, admin):
    fast = admin.post("/admin/api/keys", json={"name": "fast-submitter"}).json()
    body = {"pipeline": "unserved", "inputs": {"prompt": "x"}}
    with admin_cluster.client(headers={"Authorization": f"Bearer {fast['key']}"}) as client:
        started = time.monotonic()
        answers = []
        while len(answers) < 5 * BURST and (not answers or answers[-1].status_code == 202):
            answers.append(client.post("/v1/jobs", json=body))
        elapsed = time.monotonic() - started
        refused = answers[-1]
    accepted = len(answers) - 1
    # The burst, plus what the bucket refilled while the requests were made.
    assert BURST <= accepted <= BURST + RATE * elapsed + 1, (accepted, elapsed)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert _queue(admin, "unserved.work")["queued"] == accepted  # nothing written for a refused request
    assert admin.post("/v1/jobs", json=body).status_code == 202  # another key has its own bucket
