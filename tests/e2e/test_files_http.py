"""Uploads through HTTP: multipart in, a job that names the upload, and bad media refused with
nothing written (no row, no artifact)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from omnijobs.store.keys import KeyStore
from omnijobs.store.tables import InputFile, Job
from tests import media_samples as samples
from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS

UPLOAD_MAX = 200_000
PNG = samples.image("PNG", (20, 10))
WAV = samples.wav(1200)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


@pytest.fixture(scope="module")
def cluster(settings_env, store, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("files-artifacts")
    c = Cluster({**settings_env, "OMNIJOBS_ARTIFACTS_DIR": str(artifacts),
                 "OMNIJOBS_UPLOAD_MAX_BYTES": str(UPLOAD_MAX), "OMNIJOBS_MEDIA_MAX_PIXELS": "40000"},
                ARTIFACTS / "e2e-files-logs")
    keys = KeyStore(store.engine)
    c.auth_headers = {"Authorization": f"Bearer {keys.create('files-a').key}"}
    c.other_key = keys.create("files-b").key
    c.artifacts = artifacts
    try:
        started = [c.start_worker("media_echo.say")]
        c.start_api()
        c.wait_workers_ready(started)
        yield c
    finally:
        c.stop()


@pytest.fixture()
def client(cluster):
    with cluster.client() as http:
        yield http


def _written(store, artifacts: Path) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(Job)), conn.scalar(select(func.count()).select_from(InputFile))
    return (*rows, sum(1 for p in artifacts.rglob("*") if p.is_file()))


def test_upload_and_use_in_a_job(cluster, client):
    resp = client.post("/v1/files", files={"file": ("photo.png", PNG, "application/octet-stream")})
    assert resp.status_code == 201, resp.text
    up = resp.json()
    assert (up["kind"], up["content_type"], up["bytes"], up["filename"]) == ("image", "image/png", len(PNG), "photo.png")
    assert client.get(f"/v1/files/{up['id']}").json()["content_type"] == "image/png"

    resp = client.post("/v1/jobs", json={"pipeline": "media_echo", "inputs": {
        "prompt": "hi", "image": f"file:{up['id']}", "audio": "data:audio/wav;base64," + base64.b64encode(WAV).decode()}})
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["id"], timeout=60)
    assert job["status"] == "succeeded", job
    # The stage got the upload's very bytes as Media, and the data URI's too.
    assert job["outputs"]["text"] == f"hi|image:image/png:{len(PNG)}:{_digest(PNG)}|audio:audio/wav:{len(WAV)}:{_digest(WAV)}"
    assert (job["inputs"]["image"]["content_type"], job["inputs"]["image"]["bytes"]) == ("image/png", len(PNG))


def test_another_key_cannot_see_or_use_an_upload(cluster, client, store):
    up = client.post("/v1/files", files={"file": ("a.png", PNG)}).json()
    with cluster.client(headers={"Authorization": f"Bearer {cluster.other_key}"}) as other:
        assert other.get(f"/v1/files/{up['id']}").status_code == 404
        before = _written(store, cluster.artifacts)
        resp = other.post("/v1/jobs", json={"pipeline": "media_echo", "inputs": {"prompt": "x", "image": f"file:{up['id']}"}})
        assert resp.status_code == 404 and resp.json()["error"]["field"] == "inputs.image"
        assert _written(store, cluster.artifacts) == before


BAD_UPLOADS = [
    ("not media", b"just some text", 422, "not a media file"),
    ("truncated wav", samples.wav(4000)[:-500], 422, "WAV is truncated"),
    ("unsupported type", samples.image("BMP"), 422, "unsupported image format"),
    ("too many pixels", samples.image("PNG", (300, 200)), 413, "media_max_pixels"),
    ("over the upload limit", b"\x89PNG\r\n\x1a\n" + b"\x00" * (UPLOAD_MAX + 10), 413, "upload_max_bytes"),
]


@pytest.mark.parametrize("name,data,status,message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_writes_nothing(cluster, client, store, name, data, status, message):
    before = _written(store, cluster.artifacts)
    resp = client.post("/v1/files", files={"file": ("x.bin", data)})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert message in error["message"] and error["field"] == "file"
    assert _written(store, cluster.artifacts) == before


def test_malformed_uploads(client):
    no_file = client.post("/v1/files", files={"other": ("a.png", PNG)})
    assert no_file.status_code == 422 and "'file'" in no_file.json()["error"]["message"]
    not_multipart = client.post("/v1/files", content=PNG, headers={"content-type": "image/png"})
    assert not_multipart.status_code == 422
    assert client.get("/v1/files/not-a-uuid").status_code == 404


def test_bad_media_in_a_job_writes_nothing(cluster, client, store):
    before = _written(store, cluster.artifacts)
    good = "data:image/png;base64," + base64.b64encode(PNG).decode()
    truncated = "data:audio/wav;base64," + base64.b64encode(samples.wav(4000)[:-300]).decode()
    resp = client.post("/v1/jobs", json={"pipeline": "media_echo",
                                         "inputs": {"prompt": "x", "image": good, "audio": truncated}})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "inputs.audio", resp.text
    resp = client.post("/v1/jobs", json={"pipeline": "media_echo", "inputs": {"prompt": "x", "image": "http://10.0.0.1/a.png"}})
    assert resp.status_code == 422 and "private" in resp.json()["error"]["message"]
    assert _written(store, cluster.artifacts) == before
