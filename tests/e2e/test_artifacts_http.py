"""Tensors between stages and file outputs, through shared memory and through a real S3 server."""

from __future__ import annotations

import io
import time
import uuid
import wave

import boto3
import pytest

from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.s3server import artifact_env, run_s3_server

STAGES = ["relay.make", "relay.voice"]


@pytest.fixture(scope="module", params=["shm", "s3"])
def relay(request, settings_env, tmp_path_factory):
    with run_s3_server(tmp_path_factory.mktemp("s3")) as s3:
        env = {**settings_env, **artifact_env(request.param, s3, f"relay-{uuid.uuid4().hex[:8]}")}
        c = Cluster(env, ARTIFACTS / f"e2e-logs-relay-{request.param}")
        try:
            started = [c.start_worker(stage) for stage in STAGES]
            c.start_api()
            c.start_reconciler()
            c.wait_workers_ready(started)
            yield request.param, c, env
        finally:
            c.stop()


def _leftovers(kind: str, env: dict, job_id: str, intermediates: tuple[str, ...] = ("make/features",)) -> list[str]:
    """What the job still holds in the transit store (shared memory segments or S3 keys)."""
    if kind == "shm":
        from omnijobs.artifacts.shm import ShmConnector

        return ShmConnector().list_segments(job_id)
    s3 = boto3.client("s3", endpoint_url=env["OMNIJOBS_S3_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["OMNIJOBS_S3_ACCESS_KEY"],
                      aws_secret_access_key=env["OMNIJOBS_S3_SECRET_KEY"])
    listed = s3.list_objects_v2(Bucket=env["OMNIJOBS_S3_BUCKET"], Prefix=f"{job_id}/")
    return [o["Key"] for o in listed.get("Contents", []) if any(f"/{i}-" in o["Key"] for i in intermediates)]


def _eventually_empty(kind, env, job_id, timeout=10.0, intermediates=("make/features",)) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _leftovers(kind, env, job_id, intermediates)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_tensor_hand_off_and_file_outputs(relay):
    kind, cluster, env = relay
    with cluster.client() as http:
        prompts = [f"hello {i}" for i in range(4)]
        ids = [http.post("/v1/jobs", json={"pipeline": "relay", "inputs": {"prompt": p}}).json()["id"]
               for p in prompts]
        for prompt, job_id in zip(prompts, ids, strict=True):
            job = wait_job(http, job_id)
            assert job["status"] == "succeeded", job
            # The tensor bundle went through the store and came back whole, to the right job.
            assert job["outputs"]["text"] == f"{prompt}|(2, 3)"
            voice = next(s for s in job["stages"] if s["name"] == "voice")
            assert voice["inputs"]["features"]["type"] == "tensor"
            assert "artifact" not in voice["inputs"]["features"]  # locations are not shown to clients

            sound = job["outputs"]["sound"]
            assert sound["content_type"] == "audio/wav"
            resp = http.get(sound["url"])
            assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
            with wave.open(io.BytesIO(resp.content)) as w:
                assert w.getframerate() == 24000 and w.getnframes() == len(prompt.encode())
            assert len(resp.content) == sound["bytes"]

            picture = http.get(f"/v1/jobs/{job_id}/outputs/picture")
            assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
            assert picture.content.startswith(b"\x89PNG\r\n\x1a\n")

            # The intermediate tensor is freed once consumed; final outputs stay downloadable.
            assert _eventually_empty(kind, env, job_id) == []


def test_output_errors(relay):
    _, cluster, _ = relay
    with cluster.client() as http:
        job_id = http.post("/v1/jobs", json={"pipeline": "relay", "inputs": {"prompt": "x"}}).json()["id"]
        assert wait_job(http, job_id)["status"] == "succeeded"
        missing = http.get(f"/v1/jobs/{job_id}/outputs/nope")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "name"
        inline = http.get(f"/v1/jobs/{job_id}/outputs/text")
        assert inline.status_code == 404 and "inline" in inline.json()["error"]["message"]
        assert http.get(f"/v1/jobs/{uuid.uuid4()}/outputs/sound").status_code == 404


def test_failed_job_leaves_no_transit_artifacts(relay):
    kind, cluster, env = relay
    with cluster.client() as http:
        job_id = http.post("/v1/jobs", json={"pipeline": "relay", "inputs": {"prompt": "fatal"}}).json()["id"]
        job = wait_job(http, job_id)
        assert job["status"] == "failed" and job["error"]["stage"] == "voice"
        assert _eventually_empty(kind, env, job_id) == []


def test_canceled_job_leaves_no_transit_artifacts(relay):
    kind, cluster, env = relay
    with cluster.client() as http:
        job_id = http.post("/v1/jobs", json={"pipeline": "relay", "inputs": {"prompt": "sleep:20"}}).json()["id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = http.get(f"/v1/jobs/{job_id}").json()
            voice = next(s for s in job["stages"] if s["name"] == "voice")
            if voice["status"] == "running" and voice["progress"]:
                break
            time.sleep(0.1)
        assert voice["progress"]["step"] >= 1  # progress reported by the engine is visible
        canceled = http.post(f"/v1/jobs/{job_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert _eventually_empty(kind, env, job_id) == []
