"""A real OmniJobs stack for benchmarks: its own Redis and Postgres database, the API and one worker per stage.

Every process is a subprocess of the benchmark, started the way an operator starts them
(`omnijobs migrate`, `omnijobs keys create`, `omnijobs api`, `omnijobs worker --stage ...`), so
what is measured is main as it is deployed. Everything the stack made is removed on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import redis
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
PIPELINES = Path(__file__).resolve().parent / "pipelines"
PG_ADMIN_URL = os.environ.get("OMNIJOBS_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
FINAL = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    return cpu_s(procs)


def cpu_s(procs) -> float:
    """User + system CPU seconds of these processes; one that has exited counts nothing."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def wait_for(predicate, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError, redis.RedisError) as exc:  # not up yet
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s ({last})")


class Stack:
    """Start with `with Stack(...) as stack:`; `stack.start_workers([...])` then submit over HTTP."""

    def __init__(self, *, models_dir: Path | None = None, env: dict[str, str] | None = None,
                 api_workers: int = 1, device: str = "cpu", keep_logs: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="omnijobs-bench-"))
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.device = device
        self.api_workers = api_workers
        self.keep_logs = keep_logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.db_name = f"omnijobs_bench_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.db_url = self.admin.url.set(database=self.db_name).render_as_string(hide_password=False)
        self.broker_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "OMNIJOBS_DATABASE_URL": self.db_url,
            "OMNIJOBS_BROKER_URL": self.broker_url,
            "OMNIJOBS_PIPELINES_PATH": str(PIPELINES),
            # Every stage process on one host: tensors between stages go through shared memory.
            "OMNIJOBS_ARTIFACTS": "shm",
            "OMNIJOBS_ARTIFACTS_DIR": str(self.dir / "artifacts"),
            "OMNIJOBS_TORCH_THREADS": "1",
            **({"OMNIJOBS_MODELS_DIR": str(models_dir)} if models_dir else {}),
            **(env or {}),
        }
        self.api_url = ""
        self.headers: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                                  "--save", "", "--appendonly", "no"], omnijobs=False)
            wait_for(lambda: redis.Redis(port=self.redis_port).ping(), "redis", 20)
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.db_name}"'))
            self._cli(["migrate"])
            key = json.loads(self._cli(["keys", "create", "--name", "bench", "--json"]))
            self.headers = {"Authorization": f"Bearer {key['key']}"}
            port = free_port()
            self.spawn("api", ["api", "--port", str(port), "--workers", str(self.api_workers)])
            self.api_url = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200, "api", 60)
        except BaseException:
            self.keep_logs = True  # the logs say why it did not start
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
        self.admin.dispose()
        if exc and exc[0] is not None:
            self.keep_logs = True
        if self.keep_logs:
            print(f"logs kept in {self.logs}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def spawn(self, name: str, args: list[str], omnijobs: bool = True) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        cmd = [sys.executable, "-m", "omnijobs", *args] if omnijobs else args
        proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def _cli(self, args: list[str]) -> str:
        proc = subprocess.run([sys.executable, "-m", "omnijobs", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"omnijobs {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start_workers(self, stages: list[str], timeout: float = 300) -> None:
        """One `omnijobs worker` per stage ("<pipeline>.<stage>"), started together, waited for together."""
        for stage in stages:
            self.spawn(f"worker-{stage}", ["worker", "--stage", stage, "--device", self.device])
        for stage in stages:
            self.wait_log(f"worker-{stage}", b" ready.", timeout)

    def wait_log(self, name: str, marker: bytes, timeout: float = 300) -> None:
        """Wait until a process's log shows `marker` (Celery logs "<name> ready." once it consumes)."""
        def ready():
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.tail(name)}")
            return marker in (self.logs / f"{name}.log").read_bytes()
        wait_for(ready, name, timeout)

    def worker_pids(self) -> dict[str, int]:
        return {name.removeprefix("worker-"): p.pid for name, p in self.procs.items() if name.startswith("worker-")}

    def cpu_s(self, names: list[str] | None = None) -> dict[str, float]:
        """CPU seconds so far of the named processes (default: every worker), by stage or process name."""
        if names is None:
            return {stage: process_cpu_s(pid) for stage, pid in self.worker_pids().items()}
        return {name: process_cpu_s(self.procs[name].pid) for name in names}

    # -- jobs --------------------------------------------------------------------------------------

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers=self.headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def async_client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=self.api_url, headers=self.headers, timeout=120, limits=limits)

    def submit_all(self, bodies: list[dict], connections: int = 16) -> list[str]:
        """Submit every body at once (over `connections` connections); the job ids, in order."""
        import asyncio

        async def go() -> list[str]:
            async with self.async_client(connections) as client:
                async def one(body: dict) -> str:
                    r = await client.post("/v1/jobs", json=body)
                    if r.status_code != 202:
                        raise RuntimeError(f"submit answered {r.status_code}: {r.text[:500]}")
                    return r.json()["id"]
                return list(await asyncio.gather(*(one(b) for b in bodies)))
        return asyncio.run(go())

    def wait_all(self, job_ids: list[str], timeout: float = 1800) -> list[dict]:
        """Wait until no job of this stack is queued or running, then read each job once."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                busy = [client.get("/v1/jobs", params={"status": s, "limit": 1}).json()["data"]
                        for s in ("queued", "running")]
                if not any(busy):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jobs still running after {timeout}s; worker logs in {self.logs}")
                time.sleep(0.25)
            jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in job_ids]
        failed = [j for j in jobs if j["status"] != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} job(s) did not succeed, e.g. {json.dumps(failed[0])[:1500]}")
        return jobs

    def run_burst(self, bodies: list[dict], connections: int = 16) -> tuple[list[dict], dict[str, float]]:
        """Submit every body at once and wait for all: the finished jobs and each worker's CPU seconds."""
        before = self.cpu_s()
        jobs = self.wait_all(self.submit_all(bodies, connections))
        after = self.cpu_s()
        return jobs, {stage: after[stage] - before[stage] for stage in before}
