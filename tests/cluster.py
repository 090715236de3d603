"""Real OmniJobs processes for end-to-end tests: the API and stage workers as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
FINAL = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Starts processes with one environment; logs go to files the test can show on failure."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_url: str | None = None
        # Sent by every client from `client()`; holds the API key once the cluster made one.
        self.auth_headers: dict[str, str] = {}

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client for the API: every test talks to the cluster through one of these."""
        headers = {**self.auth_headers, **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.api_url, timeout=kwargs.pop("timeout", 30), headers=headers, **kwargs)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "omnijobs", *args], env=self.env, cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def create_key(self, name: str, admin: bool = False) -> dict:
        """A new API key made by `omnijobs keys create` (the database must be migrated)."""
        args = [sys.executable, "-m", "omnijobs", "keys", "create", "--name", name, "--json"]
        proc = subprocess.run([*args, "--admin"] if admin else args, check=False, env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"omnijobs keys create failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout)

    def start_api(self) -> str:
        if not self.auth_headers:  # every client from `client()` then acts as an admin
            self.admin_key = self.create_key("tests-admin", admin=True)
            self.auth_headers = {"Authorization": f"Bearer {self.admin_key['key']}"}
        port = free_port()
        self._spawn("api", ["api", "--port", str(port)])
        self.api_url = f"http://127.0.0.1:{port}"
        self._wait(lambda: httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200, "api", 60)
        return self.api_url

    def start_worker(self, stage: str, name: str | None = None) -> subprocess.Popen:
        name = name or f"worker-{stage}"
        log_path = self.log_dir / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        proc = self._spawn(name, ["worker", "--stage", stage])
        return proc, log_path, offset

    def wait_workers_ready(self, started: list, timeout: float = 120) -> None:
        for proc, log_path, offset in started:
            def ready(proc=proc, log_path=log_path, offset=offset):
                if proc.poll() is not None:
                    raise RuntimeError(f"{log_path.name} exited with {proc.returncode}:\n{self.tail(log_path)}")
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    return b" ready." in f.read()
            self._wait(ready, log_path.name, timeout)

    def start_reconciler(self) -> None:
        self._spawn("reconciler", ["reconciler"])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
            self.procs.pop(name)

    def tail(self, path: Path, lines: int = 40) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    @staticmethod
    def _wait(predicate, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (httpx.HTTPError, OSError) as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s ({last})")


def wait_job(client: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s: {job}")


@contextlib.contextmanager
def isolated_cluster(settings_env: dict[str, str], log_dir: Path, pipelines: dict[str, str], tmp_dir: Path,
                     **env: str):
    """A cluster (API only; start workers on it) with a database of its own and extra pipeline files.

    Nothing else publishes to its pipelines' queues and no reconciler re-publishes into them, so a
    test can count exactly what waits there. Their broker keys are removed afterwards.
    """
    import redis

    from omnijobs.admission import queue_keys
    from omnijobs.pipelines.loader import parse
    from omnijobs.store.migrate import upgrade
    from tests.services import create_database, drop_database, require_postgres

    pg = require_postgres()
    db = create_database(pg)
    upgrade(db)
    queues = []
    for name, text in pipelines.items():
        (tmp_dir / f"{name}.yaml").write_text(text)
        spec = parse(text, name)
        queues += [spec.queue(stage) for stage in spec.stages]
    paths = os.pathsep.join(p for p in (settings_env.get("OMNIJOBS_PIPELINES_PATH", ""), str(tmp_dir)) if p)
    cluster = Cluster({**settings_env, "OMNIJOBS_DATABASE_URL": db, "OMNIJOBS_PIPELINES_PATH": paths, **env}, log_dir)
    broker = redis.Redis.from_url(cluster.env["OMNIJOBS_BROKER_URL"])
    try:
        cluster.start_api()
        yield cluster
    finally:
        cluster.stop()
        if queues:
            broker.delete(*[key for q in queues for key in queue_keys(q)])
        drop_database(pg, db)
