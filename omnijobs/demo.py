"""`omnijobs demo`: start the API and one worker per stage here, run a job of each pipeline, print it.

Uses the configured database and broker (the local Postgres and Redis by default).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO_JOBS = {
    "chat": {"inputs": {"prompt": "Say hello to OmniJobs."}, "params": {"max_tokens": 12, "seed": 1}},
    "draft_rewrite": {
        "inputs": {"prompt": "A note about the sea."},
        "params": {"draft": {"max_tokens": 10, "seed": 2}, "rewrite": {"max_tokens": 10, "seed": 3}},
    },
}


def run_demo(settings, log_dir: Path, echo=print) -> int:
    import httpx

    from omnijobs.models.tiny import build_tiny
    from omnijobs.pipelines import load_registry
    from omnijobs.store.migrate import upgrade

    upgrade(settings.database_url)
    build_tiny(settings.models_dir)
    registry = load_registry(settings.pipelines_path)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        for pipeline in DEMO_JOBS:
            for stage in registry.get(pipeline).stages:
                procs.append(_spawn(["worker", "--stage", f"{pipeline}.{stage}"], log_dir / f"{pipeline}.{stage}.log"))
        port = _free_port()
        procs.append(_spawn(["api", "--port", str(port)], log_dir / "api.log"))
        url = f"http://127.0.0.1:{port}"
        echo(f"API at {url} (logs in {log_dir}); waiting for the workers to load their models...")
        with httpx.Client(base_url=url, timeout=30) as client:
            _wait(lambda: client.get("/readyz").status_code == 200, procs)
            failed = 0
            for pipeline, body in DEMO_JOBS.items():
                job = client.post("/v1/jobs", json={"pipeline": pipeline, **body}).json()
                echo(f"submitted {pipeline} job {job['id']}")
                while job["status"] not in ("succeeded", "failed", "canceled"):
                    time.sleep(0.3)
                    job = client.get(f"/v1/jobs/{job['id']}").json()
                echo(f"  {job['status']} in {job['metrics']['total_s']}s; outputs: {job['outputs']}")
                for stage in job["stages"]:
                    echo(f"    stage {stage['name']}: {stage['status']}, batch {stage['batch_size']}, "
                         f"ran {stage['run_s']}s on {stage['worker']}")
                failed += job["status"] != "succeeded"
        return 1 if failed else 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "omnijobs", *args], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait(ready, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a process exited early: {dead[0].args} (see its log)")
        try:
            if ready():  # jobs submitted before a worker is up simply wait in its queue
                return
        except httpx.HTTPError:
            pass  # the API is still starting
        time.sleep(0.5)
    raise TimeoutError("the API did not become ready")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
