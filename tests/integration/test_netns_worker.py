"""A stage worker on "another host": a network namespace that reaches the job store, broker and S3
only over a veth link, the way a worker on a second machine would.

The local Postgres, Redis and S3 listen on 127.0.0.1 only, which the namespace cannot reach. Small
TCP forwarders owned by this test listen on the root side of the veth and relay to them; the
machine's services are not reconfigured. Every value crosses stages through S3
(OMNIJOBS_INLINE_MAX_BYTES=0): the worker in the namespace reads what the worker here wrote.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.cluster import REPO, Cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.procs import stop_all
from tests.s3server import run_s3_server
from tests.services import spare_redis_url

REMOTE_HOST = "remote-host"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _netns_privilege() -> str | None:
    """None if this process may create network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN); CI runs these tests as root"
    probe = f"ojprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@contextmanager
def veth_namespace():
    """A namespace joined to the root namespace by a veth pair. Yields (namespace, root side address, inner)."""
    tag = uuid.uuid4().hex[:6]
    ns, outer, inner = f"oj{tag}", f"ojo{tag}", f"oji{tag}"
    subnet = f"10.231.{random.randint(0, 63) * 4}"
    root_ip, ns_ip = f"{subnet}.1", f"{subnet}.2"
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("addr", "add", f"{root_ip}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, root_ip
    finally:
        _ip("netns", "del", ns, check=False)  # takes the inner end, and with it the pair
        _ip("link", "del", outer, check=False)


class Forwarder:
    """TCP relays from (bind address, port) to 127.0.0.1 ports, on one asyncio loop in a thread."""

    def __init__(self, bind: str):
        self.bind = bind
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="forwarder", daemon=True)
        self.thread.start()
        self.servers = []

    def forward(self, target_port: int) -> int:
        """Listen on the bind address (same port number as the target); returns the port."""
        async def start():
            return await asyncio.start_server(self._relay(target_port), self.bind, target_port)
        self.servers.append(asyncio.run_coroutine_threadsafe(start(), self.loop).result(10))
        return target_port

    def _relay(self, target_port: int):
        async def handle(reader, writer):
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        return handle

    def close(self) -> None:
        async def stop():
            for server in self.servers:
                server.close()
                await server.wait_closed()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def _via(url: str, host: str) -> str:
    """The same URL with its host replaced (the port stays: the forwarders reuse the port numbers)."""
    parts = urlsplit(url)
    user, at, hostport = parts.netloc.rpartition("@")
    port = hostport.rpartition(":")[2]
    return urlunsplit(parts._replace(netloc=f"{user}{at}{host}:{port}"))


@pytest.fixture(scope="module")
def two_hosts(settings_env, tmp_path_factory):
    reason = _netns_privilege()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("netns")
    with run_s3_server(tmp) as s3, veth_namespace() as (ns, root_ip):
        import boto3

        bucket = f"omnijobs-netns-{uuid.uuid4().hex[:6]}"
        boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key, region_name="us-east-1").create_bucket(Bucket=bucket)
        env = {**settings_env, "OMNIJOBS_BROKER_URL": spare_redis_url(2), "OMNIJOBS_ARTIFACTS": "s3", "OMNIJOBS_S3_ENDPOINT_URL": s3.endpoint,
               "OMNIJOBS_S3_BUCKET": bucket, "OMNIJOBS_S3_ACCESS_KEY": s3.access_key,
               "OMNIJOBS_S3_SECRET_KEY": s3.secret_key, "OMNIJOBS_INLINE_MAX_BYTES": "0"}
        forwarder = Forwarder(root_ip)
        for url in (env["OMNIJOBS_DATABASE_URL"], env["OMNIJOBS_BROKER_URL"], s3.endpoint):
            forwarder.forward(urlsplit(url).port)
        remote_env = {**env, "OMNIJOBS_WORKER_HOSTNAME": REMOTE_HOST, **{
            k: _via(env[k], root_ip) for k in ("OMNIJOBS_DATABASE_URL", "OMNIJOBS_BROKER_URL",
                                               "OMNIJOBS_S3_ENDPOINT_URL")}}
        cluster = Cluster(env, ARTIFACTS / "netns-logs")
        remote = None
        try:
            cluster.start_api()
            started = [cluster.start_worker("draft_rewrite.draft")]
            log = cluster.log_dir / "remote-draft_rewrite.rewrite.log"
            offset = log.stat().st_size if log.exists() else 0
            with open(log, "ab") as out:
                remote = subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-m", "omnijobs", "worker", "--stage",
                     "draft_rewrite.rewrite"],
                    env={**os.environ, **remote_env, "PYTHONPATH": str(REPO)}, cwd=REPO, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
            started.append((remote, log, offset))
            cluster.wait_workers_ready(started)
            yield cluster, ns, root_ip, s3, bucket
        finally:
            # All at once: each worker's warm shutdown takes seconds, and it is not what this test is about.
            procs = [*cluster.procs.values(), *([remote] if remote is not None else [])]
            stop_all(procs)
            cluster.procs.clear()
            forwarder.close()


def test_the_namespace_reaches_the_services_only_over_the_veth(two_hosts):
    _, ns, root_ip, s3, _ = two_hosts
    port = urlsplit(s3.endpoint).port
    probe = ("import socket, sys\n"
             "def ok(h):\n"
             "    try:\n"
             "        socket.create_connection((h, int(sys.argv[2])), timeout=2).close(); return True\n"
             "    except OSError:\n"
             "        return False\n"
             "print(ok('127.0.0.1'), ok(sys.argv[1]))\n")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe, root_ip, str(port)],
                         check=True,
                         capture_output=True, text=True, timeout=30).stdout.split()
    assert out == ["False", "True"], out


def test_a_stage_on_the_other_host_reads_and_writes_through_s3(two_hosts):
    import boto3

    cluster, _, _, s3, bucket = two_hosts
    with cluster.client() as client:
        job = client.post("/v1/jobs", json={"pipeline": "draft_rewrite", "inputs": {"prompt": "the sea"},
                                            "params": {"max_tokens": 6, "seed": 3}}).json()
        job = wait_job(client, job["id"], timeout=120)
        assert job["status"] == "succeeded", job
        workers = {s["name"]: s["worker"] for s in job["stages"]}
        assert workers["rewrite"].startswith(f"draft_rewrite.rewrite@{REMOTE_HOST}:"), workers
        assert REMOTE_HOST not in workers["draft"], workers
        # Final outputs are S3 objects too; the API serves them back.
        text = job["outputs"]["text"]
        assert isinstance(text, dict) and text.get("url"), text
        body = client.get(text["url"])
        assert body.status_code == 200, body.text

    listed = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(job["id"] in k and "rewrite" in k for k in keys), keys


def test_a_shared_memory_reference_from_this_host_fails_clearly_on_the_other(two_hosts, store, settings):
    """shm is same-host only: the worker elsewhere refuses the reference with a reason, once, not in a loop."""
    import socket

    from omnijobs.artifacts.refs import make_ref
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    cluster = two_hosts[0]
    job, (draft,), _ = store.create_job(store.pipelines.get("draft_rewrite"), {"prompt": "x"}, {})
    (claim,) = store.claim([(draft.run_id, draft.attempt)], "draft_rewrite.draft@here", "b", 30)
    here = socket.gethostname()
    ref = {**make_ref(f"shm://omnijobs-{job.id.hex[:8]}", "json", "application/json", 10), "host": here}
    tasks = store.complete(claim, {"text": ref})
    broker = settings.model_copy(update={"broker_url": cluster.env["OMNIJOBS_BROKER_URL"]})
    CeleryPublisher(make_celery(broker)).publish(tasks)
    with cluster.client() as client:
        view = wait_job(client, str(job.id), timeout=60)
    assert view["status"] == "failed", view
    rewrite = next(s for s in view["stages"] if s["name"] == "rewrite")
    assert rewrite["worker"].startswith(f"draft_rewrite.rewrite@{REMOTE_HOST}:"), rewrite
    assert here in view["error"]["message"] and "OMNIJOBS_ARTIFACTS=s3" in view["error"]["message"], view["error"]
