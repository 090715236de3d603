"""The compose file, run without Docker: each OmniJobs service's command, natively, with its environment.

`docker-compose config` (the real Compose v2 binary) resolves the base file plus the CPU override
with an env file written here, as an operator's would be. Then every service whose command is
`omnijobs ...` runs as a process with exactly the environment compose gives it (nothing from the
test runner's OMNIJOBS_* leaks in), hostnames mapped to the real local services: `postgres` to
a fresh database and role on the local Postgres, `redis` to this test's Redis db, `s3` to a
SeaweedFS S3 server. The bucket is made here (the `s3-bucket` one-shot uses MinIO's client).
Stage workers run for the pipelines the test submits jobs to; the others' commands are checked
against the CLI and the registry by test_compose_file.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from omnijobs.demo_jobs import tiny_png
from tests.cluster import REPO, Cluster, free_port, wait_job
from tests.conftest import ARTIFACTS
from tests.integration.test_compose_file import (
    BASE,
    CPU,
    ENV_EXAMPLE,
    _command,
    _compose,
)
from tests.procs import stop_all
from tests.s3server import run_s3_server
from tests.services import require_postgres, spare_redis_url

# One pipeline keeps the test short; stage hand-offs between workers are covered by the e2e tests.
PIPELINES = ("chat",)


def _env_file(path: Path, overrides: dict[str, str]) -> Path:
    """.env.example with this run's secrets and database, as an operator fills it in."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0].strip()
        lines.append(f"{name}={overrides.pop(name)}" if "=" in line and name in overrides else line)
    lines += [f"{k}={v}" for k, v in overrides.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class HostMap:
    """Compose's service hostnames -> the local services standing in for them."""

    def __init__(self, hosts: dict[str, str], redis_db: str, paths: dict[str, str]):
        self.hosts = hosts  # "postgres:5432" -> "127.0.0.1:5432"
        self.redis_db = redis_db
        self.paths = paths  # "/models" -> a local folder

    def value(self, value: str) -> str:
        if "://" in value:
            parts = urlsplit(value)
            user, at, hostport = parts.netloc.rpartition("@")
            if hostport in self.hosts:
                path = f"/{self.redis_db}" if parts.scheme.startswith("redis") else parts.path
                return urlunsplit(parts._replace(netloc=f"{user}{at}{self.hosts[hostport]}", path=path))
        return self.paths.get(value, value)

    def command(self, args: list[str], ports: dict[str, str]) -> list[str]:
        out = []
        for i, arg in enumerate(args):
            if i and args[i - 1] == "--port":
                arg = ports[arg]
            elif i and args[i - 1] == "--host":
                arg = "127.0.0.1"
            out.append(self.value(arg))
        return out


@pytest.fixture(scope="module")
def pg_role():
    """A database and a role with a password, as the postgres service would create them."""
    admin = require_postgres()
    role, db, password = f"omnijobs_ct_{uuid.uuid4().hex[:8]}", f"omnijobs_ct_{uuid.uuid4().hex[:8]}", \
        secrets.token_urlsafe(16)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f'CREATE DATABASE "{db}" OWNER "{role}"'))
    yield role, db, password
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_role, redis_url, models_dir):
    import boto3

    role, db, password = pg_role
    tmp = tmp_path_factory.mktemp("compose-native")
    with run_s3_server(tmp) as s3:
        env_file = _env_file(tmp / "compose.env", {
            "POSTGRES_USER": role, "POSTGRES_PASSWORD": password, "POSTGRES_DB": db,
            "S3_ACCESS_KEY": s3.access_key, "S3_SECRET_KEY": s3.secret_key,
            "OMNIJOBS_TORCH_THREADS": "1",  # a shared 2-core machine, not the production default
        })
        proc = _compose("config", "--format", "json", env_file=env_file, files=(BASE, CPU))
        assert proc.returncode == 0, proc.stderr
        services = json.loads(proc.stdout)["services"]

        pg = sa.make_url(require_postgres().url)
        hosts = HostMap(
            {"postgres:5432": f"{pg.host}:{pg.port or 5432}", "redis:6379": urlsplit(redis_url).netloc,
             "s3:9000": urlsplit(s3.endpoint).netloc},
            redis_db=urlsplit(spare_redis_url(1)).path.lstrip("/"),
            paths={"/models": str(models_dir)},
        )
        bucket = services["api"]["environment"]["OMNIJOBS_S3_BUCKET"]
        boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key, region_name="us-east-1").create_bucket(Bucket=bucket)

        cluster = Cluster({}, ARTIFACTS / "compose-native-logs")
        try:
            yield _start(cluster, services, hosts, tmp), services, s3, bucket
        finally:
            stop_all(list(cluster.procs.values()))
            cluster.procs.clear()


def _native_env(service: dict, hosts: HostMap) -> dict[str, str]:
    # Only what compose sets, plus what any process needs to start: no OMNIJOBS_* from the runner.
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    mapped = {k: hosts.value(str(v)) for k, v in (service.get("environment") or {}).items()}
    return {**base, **mapped, "PYTHONPATH": str(REPO)}


def _start(cluster: Cluster, services: dict, hosts: HostMap, tmp: Path) -> Cluster:
    omnijobs = {name: s for name, s in services.items() if _command(s)[:1] == ["omnijobs"]}
    one_shots = {name for name, s in omnijobs.items() if s.get("restart") == "no"}
    assert {"migrate", "models"} <= one_shots, one_shots
    wanted_stages = {f"stage-{p}-{st}" for p in PIPELINES for st in _stages(p)}
    assert wanted_stages <= set(omnijobs), sorted(wanted_stages - set(omnijobs))
    pending = {n: s for n, s in omnijobs.items()
               if n not in one_shots and (not n.startswith("stage-") or n in wanted_stages)}
    ports = {"8000": str(free_port())}

    def args_env(service: dict) -> tuple[list[str], dict[str, str]]:
        return hosts.command(_command(service), ports)[1:], _native_env(service, hosts)

    # Started in the order depends_on gives: the one-shots at once, then each long-running service as
    # soon as the one-shots it waits for (service_completed_successfully) have exited with 0.
    running_one_shots = {}
    for name in one_shots:
        args, env = args_env(omnijobs[name])
        with open(cluster.log_dir / f"{name}.log", "wb") as out:
            running_one_shots[name] = subprocess.Popen([sys.executable, "-m", "omnijobs", *args], env=env, cwd=tmp,
                                                       stdout=out, stderr=subprocess.STDOUT)
    completed: set[str] = set()
    started = []
    deadline = time.monotonic() + 300
    while pending:
        assert time.monotonic() < deadline, f"still waiting to start {sorted(pending)}"
        for name, proc in running_one_shots.items():
            if name not in completed and proc.poll() is not None:
                assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{cluster.tail(cluster.log_dir / f'{name}.log')}"
                completed.add(name)
                if name == "migrate":  # the operator's first step once the schema exists
                    cluster.env = _native_env(omnijobs["api"], hosts)
                    key = cluster.create_key("compose-admin", admin=True)
                    cluster.auth_headers = {"Authorization": f"Bearer {key['key']}"}
        for name in list(pending):
            deps = {d for d, c in (pending[name].get("depends_on") or {}).items()
                    if d in one_shots and c["condition"] == "service_completed_successfully"}
            if not deps <= completed:
                continue
            args, cluster.env = args_env(pending.pop(name))
            log = cluster.log_dir / f"{name}.log"
            offset = log.stat().st_size if log.exists() else 0
            proc = cluster._spawn(name, args)
            if name.startswith("stage-"):
                started.append((proc, log, offset))
        time.sleep(0.1)
    cluster.api_url = f"http://127.0.0.1:{ports['8000']}"

    # The api service's own healthcheck command, pointed at the mapped port.
    check = [a.replace("127.0.0.1:8000", f"127.0.0.1:{ports['8000']}") for a in services["api"]["healthcheck"]["test"]]
    assert check[0] == "CMD" and check[1] == "python", check
    cluster._wait(lambda: subprocess.run([sys.executable, *check[2:]], check=False, capture_output=True,
                                         timeout=10).returncode == 0, "api healthcheck", 60)
    cluster.wait_workers_ready(started)
    return cluster


def _stages(pipeline: str) -> list[str]:
    from omnijobs.pipelines import load_registry

    return list(load_registry().get(pipeline).stages)


def test_compose_services_run_jobs(stack):
    cluster, _, s3, bucket = stack
    with cluster.client() as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ok", ready
        ids = [client.post("/v1/jobs", json={"pipeline": "chat", "inputs": {"prompt": f"hi {i}"},
                                             "params": {"max_tokens": 5}}).json()["id"] for i in range(3)]
        for job_id in ids:
            job = wait_job(client, job_id, timeout=120)
            assert job["status"] == "succeeded", job
            for stage in job["stages"]:
                # The worker that ran it is the one of the compose service for that stage.
                assert stage["worker"].startswith(f"{job['pipeline']}.{stage['name']}@"), stage

        # The API writes uploads through the S3 settings compose gives it.
        upload = client.post("/v1/files", files={"file": ("dot.png", tiny_png(), "image/png")})
        assert upload.status_code == 201, upload.text

    import boto3

    listed = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(upload.json()["id"] in k for k in keys), keys

    # Every long-running OmniJobs service is still up: none exited on its compose environment.
    for name, proc in cluster.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{cluster.tail(cluster.log_dir / f'{name}.log')}"

