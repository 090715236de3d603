"""`omnijobs dev` end to end: one command, no servers; jobs over HTTP; a clean stop.

Postgres and Redis settings in the environment point at closed ports, so a job can only succeed
through the SQLite store, the file-system broker and the file connector of dev mode.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from omnijobs.demo_jobs import run_demo_jobs
from omnijobs.pipelines import load_registry
from tests.cluster import REPO, free_port, wait_job
from tests.procs import alive, descendants

PIPELINES = ["chat", "draft_rewrite"]


@pytest.fixture(scope="module")
def dev(tmp_path_factory, models_dir):
    folder = tmp_path_factory.mktemp("dev")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMNIJOBS_MODELS_DIR": str(models_dir),
        "OMNIJOBS_PIPELINES_PATH": "",
        "OMNIJOBS_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/nowhere",
        "OMNIJOBS_BROKER_URL": "redis://127.0.0.1:9/0",
    }
    log = folder.parent / f"{folder.name}.out"
    args = [sys.executable, "-m", "omnijobs", "dev", "--dir", str(folder), "--port", str(port)]
    for name in PIPELINES:
        args += ["--pipeline", name]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"OmniJobs is running at" not in log.read_bytes():
            assert proc.poll() is None, f"omnijobs dev exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"omnijobs dev not ready:\n{log.read_text()}"
            time.sleep(0.2)
        key_file = folder / "api-key"
        key = key_file.read_text().strip() if key_file.exists() else None
        yield {"proc": proc, "folder": folder, "url": f"http://127.0.0.1:{port}", "key": key, "log": log}
    finally:
        if proc.poll() is None:  # the test failed before stopping it: stop it, and never leave its children
            children = descendants(proc.pid)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in children:
                if alive(pid):
                    os.killpg(pid, signal.SIGKILL)


def test_dev_mode_runs_jobs_and_stops_cleanly(dev):
    folder, log = dev["folder"], dev["log"]
    banner = log.read_text()
    assert dev["url"] in banner and "curl" in banner, banner
    if dev["key"]:
        assert dev["key"] in banner
    headers = {"Authorization": f"Bearer {dev['key']}"} if dev["key"] else {}
    with httpx.Client(base_url=dev["url"], timeout=30, headers=headers) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ok", ready
        ids = [client.post("/v1/jobs", json={"pipeline": "chat", "inputs": {"prompt": f"hello {i}"},
                                             "params": {"max_tokens": 6, "seed": i}}).json()["id"] for i in range(3)]
        ids += [client.post("/v1/jobs", json={"pipeline": "draft_rewrite", "inputs": {"prompt": f"sea {i}"},
                                              "params": {"max_tokens": 6}}).json()["id"] for i in range(2)]
        jobs = [wait_job(client, job_id, timeout=120) for job_id in ids]
        for job in jobs:
            assert job["status"] == "succeeded", job
            assert isinstance(job["outputs"]["text"], str) and job["outputs"]["text"], job
            for stage in job["stages"]:
                assert stage["worker"].startswith(f"{job['pipeline']}.{stage['name']}@"), stage
        assert isinstance(jobs[-1]["outputs"]["draft"], str)

        # The demo of `omnijobs dev --demo`, against the same running processes.
        lines: list[str] = []
        specs = [load_registry().get(name) for name in PIPELINES]
        assert run_demo_jobs(client, specs, folder / "outputs", lines.append) == 0, lines
        assert sum("job" in ln and ": succeeded in" in ln for ln in lines) == len(PIPELINES), lines

    # What carried the jobs: rows in the SQLite file, message files through the broker folder.
    with sqlite3.connect(folder / "omnijobs.db") as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
        runs = db.execute("SELECT count(*) FROM stage_runs WHERE status = 'succeeded'").fetchone()[0]
    assert statuses == {"succeeded": 5 + len(PIPELINES)}, statuses
    assert runs == 3 + 2 * 2 + 3
    processed = list((folder / "broker" / "processed").glob("*.msg"))
    assert len(processed) >= runs, processed
    assert not list((folder / "broker" / "queue").glob("*.msg"))

    proc = dev["proc"]
    children = descendants(proc.pid)
    assert len(children) >= 1 + 1 + 3, f"expected api, reconciler and 3 workers: {children}"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    assert proc.wait(timeout=60) == 0, log.read_text()
    stop_s = time.monotonic() - started
    stray = [pid for pid in children if alive(pid)]
    assert not stray, f"still running after omnijobs dev stopped: {stray}"
    assert "stopped" in log.read_text()
    print(f"dev mode stopped in {stop_s:.1f}s")


def test_dev_mode_refuses_an_unknown_pipeline(tmp_path, models_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMNIJOBS_MODELS_DIR": str(models_dir)}
    proc = subprocess.run([sys.executable, "-m", "omnijobs", "dev", "--dir", str(tmp_path), "--pipeline", "nope"],
                          check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown pipeline 'nope'" in proc.stderr
