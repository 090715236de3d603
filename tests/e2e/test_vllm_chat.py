"""The chat stage on the vLLM engine, end to end through HTTP, with continuous batching.

The stage worker runs in the vLLM environment (.venv-vllm, built by tests/vllm_env.sh); the API,
the reconciler and this test run in the main one. The pipeline file names the transformers kind:
the worker picks vLLM because it is installed there (OMNIJOBS_AR_ENGINE=auto).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.cluster import REPO, isolated_cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.procs import alive, descendants

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

PIPELINE = """
name: vllm_chat
inputs:
  prompt: {type: text}
outputs:
  text: generate.text
  usage: generate.usage
stages:
  generate:
    engine: transformers_lm
    model: tiny/qwen2
    inputs: {prompt: job.prompt}
    batch: {max_size: 8, max_wait_ms: 20}
    engine_args: {max_model_len: 1024, max_num_seqs: 8}
    timeout_s: 600
    params:
      max_tokens: {type: integer, default: 8, min: 1, max: 1000}
      temperature: {type: number, default: 1.0}
      seed: {type: integer, default: null, nullable: true}
      ignore_eos: {type: boolean, default: true}
"""


def start_vllm_worker(cluster, name: str = "vllm-worker"):
    """`omnijobs worker` in the vLLM environment; (proc, log path, offset) as Cluster.start_worker gives."""
    assert VLLM_PYTHON.exists(), "the vLLM environment is missing: run tests/vllm_env.sh (tests/run.sh does)"
    log_path = cluster.log_dir / f"{name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    env = {**cluster.env, "OMNIJOBS_AR_ENGINE": "auto", "HF_HUB_OFFLINE": "1",
           "VLLM_CACHE_ROOT": str(ARTIFACTS / "vllm-cache")}
    proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "omnijobs", "worker", "--stage", "vllm_chat.generate"],
                            env=env, cwd=REPO, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    cluster.procs[name] = proc
    return proc, log_path, offset


@pytest.fixture(scope="module")
def vchat(settings_env, tmp_path_factory):
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-vllm-logs", {"vllm_chat": PIPELINE},
                          tmp_path_factory.mktemp("vllm-pipelines")) as c:
        c.start_reconciler()
        c.wait_workers_ready([start_vllm_worker(c)], timeout=600)
        yield c


def submit(http, prompt: str, **params) -> str:
    r = http.post("/v1/jobs", json={"pipeline": "vllm_chat", "inputs": {"prompt": prompt}, "params": params})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_status(http, job_id: str, status: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == status:
            return job
        assert job["status"] not in ("succeeded", "failed", "canceled"), job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never became {status}")


def test_chat_on_vllm_through_http_and_admin_shows_the_engine(vchat):
    with vchat.client() as http:
        job = wait_job(http, submit(http, "hello there", max_tokens=6, seed=3), timeout=120)
        assert job["status"] == "succeeded", job
        assert isinstance(job["outputs"]["text"], str)
        assert job["outputs"]["usage"]["completion_tokens"] == 6
        rows = http.get("/admin/api/workers").json()["data"]
        ours = [w for w in rows if w.get("stage") == "vllm_chat.generate"]
        assert ours and ours[0]["engine"] == "vllm", rows


def test_per_row_seeds_and_max_tokens_same_in_a_batch_as_alone(vchat):
    rows = [(f"row {i} speaks", 100 + i, 3 + 4 * i) for i in range(5)]
    with vchat.client() as http:
        together = [submit(http, p, seed=s, max_tokens=n) for p, s, n in rows]
        together = [wait_job(http, j, timeout=180) for j in together]
        alone = [wait_job(http, submit(http, p, seed=s, max_tokens=n), timeout=120) for p, s, n in rows]
    for (_, _, n), a, b in zip(rows, together, alone, strict=True):
        assert a["status"] == b["status"] == "succeeded"
        assert a["outputs"]["usage"]["completion_tokens"] == n
        assert a["outputs"]["text"] == b["outputs"]["text"]


def test_short_requests_finish_long_before_a_long_one_and_a_late_one_joins(vchat):
    with vchat.client() as http:
        long_id = submit(http, "a long answer", max_tokens=900, seed=1)
        shorts = [submit(http, f"short {i}", max_tokens=8, seed=i) for i in range(4)]
        done = [wait_job(http, j, timeout=180) for j in shorts]
        long_job = http.get(f"/v1/jobs/{long_id}").json()
        # The short ones ended while the long one still ran: no batch held them back.
        assert long_job["status"] == "running", long_job
        late = wait_job(http, submit(http, "late", max_tokens=8, seed=9), timeout=180)
        assert http.get(f"/v1/jobs/{long_id}").json()["status"] == "running"
        final = wait_job(http, long_id, timeout=600)
    assert {j["status"] for j in done} == {"succeeded"} and late["status"] == "succeeded"
    assert final["status"] == "succeeded" and final["outputs"]["usage"]["completion_tokens"] == 900
    assert max(j["finished_at"] for j in done + [late]) < final["finished_at"]


def test_cancel_a_running_vllm_request(vchat):
    log_path = vchat.log_dir / "vllm-worker.log"
    with vchat.client() as http:
        job_id = submit(http, "to be canceled", max_tokens=900, seed=2)
        wait_status(http, job_id, "running")
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        job = wait_job(http, job_id, timeout=60)
        assert job["status"] == "canceled"
        # The engine is free again at once: a new request runs and ends while 900 tokens would not have.
        after = wait_job(http, submit(http, "next", max_tokens=4, seed=1), timeout=120)
        assert after["status"] == "succeeded"
    # The loop checks for canceled runs between steps at an interval: the abort may be logged after
    # the short job ended (a loaded machine steps slowly), but it must be logged.
    line = f"aborted canceled run {job['stages'][0]['id']}"
    deadline = time.monotonic() + 30
    while line not in log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no '{line}' in the worker's log"
        time.sleep(0.2)


def test_same_message_delivered_twice_runs_once(vchat):
    import sqlalchemy as sa

    from omnijobs.messages import StageTask
    from omnijobs.settings import Settings
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    db = sa.create_engine(vchat.env["OMNIJOBS_DATABASE_URL"])
    publisher = CeleryPublisher(make_celery(Settings(broker_url=vchat.env["OMNIJOBS_BROKER_URL"])))
    with vchat.client() as http:
        job_id = submit(http, "twice", max_tokens=40, seed=5)
        with db.connect() as conn:
            run = conn.execute(sa.text("SELECT id::text, attempt, queue FROM stage_runs WHERE job_id = :j"),
                               {"j": job_id}).one()
        publisher.publish([StageTask(run.id, run.attempt, run.queue)] * 2)  # two more copies
        job = wait_job(http, job_id, timeout=120)
        assert job["status"] == "succeeded"
        # The copies are taken and dropped: the next job runs and nothing is left in the queue.
        assert wait_job(http, submit(http, "after", max_tokens=2), timeout=120)["status"] == "succeeded"
    with db.connect() as conn:
        row = conn.execute(sa.text("SELECT attempt, status FROM stage_runs WHERE id = :r"), {"r": run.id}).one()
    db.dispose()
    assert (row.attempt, row.status) == (1, "succeeded")


def test_kill_9_mid_generation_requeues_and_succeeds_on_restart(vchat):
    with vchat.client() as http:
        job_id = submit(http, "survive a crash", max_tokens=600, seed=4)
        wait_status(http, job_id, "running")
        proc = vchat.procs["vllm-worker"]
        children = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the worker alone, not its group: nothing may outlive it
        proc.wait(timeout=30)
        vchat.procs.pop("vllm-worker")
        time.sleep(1.0)
        assert not [p for p in children if alive(p)], "engine processes outlived their worker"
        vchat.wait_workers_ready([start_vllm_worker(vchat)], timeout=600)
        job = wait_job(http, job_id, timeout=600)
    assert job["status"] == "succeeded", job
    assert job["outputs"]["usage"]["completion_tokens"] == 600
    assert job["stages"][0]["attempt"] == 2
