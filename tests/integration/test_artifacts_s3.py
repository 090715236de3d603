import time
import uuid

import pytest

from omnijobs.artifacts import ArtifactStoreUnavailable, S3Connector, new_key
from tests.s3server import run_s3_server


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    # No skip when the binary is missing: these tests are the only proof S3 works.
    with run_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def conn(s3_server):
    endpoint, access, secret = s3_server
    return S3Connector(f"oj-{uuid.uuid4().hex[:12]}", endpoint, access, secret, prefix="artifacts")


def test_round_trip_creates_bucket(conn):
    key = new_key("job1", "vae", "image", ".png")
    uri = conn.put(key, b"\x89PNG...", "image/png")
    assert uri == f"s3://{conn.bucket}/artifacts/{key}"
    assert conn.get(uri) == b"\x89PNG..."
    head = conn.client.head_object(Bucket=conn.bucket, Key=uri.split("/", 3)[3])
    assert head["ContentType"] == "image/png"


def test_delete_is_idempotent(conn):
    uri = conn.put(new_key("job1", "s", "p"), b"x")
    conn.delete(uri)
    conn.delete(uri)
    with pytest.raises(FileNotFoundError):
        conn.get(uri)


def test_delete_prefix_pages_and_spares_other_jobs(conn):
    conn.ensure_bucket()
    conn.ensure_bucket()
    for i in range(1005):  # more than one listing page
        conn.client.put_object(Bucket=conn.bucket, Key=f"artifacts/ab/s/p{i}", Body=b"")
    kept = conn.put(new_key("abc", "s", "p"), b"y")
    assert conn.delete_prefix("ab") == 1005
    assert conn.delete_prefix("ab") == 0
    assert conn.get(kept) == b"y"


def test_foreign_uris_refused(conn):
    for uri in ("s3://other-bucket/artifacts/x", f"s3://{conn.bucket}/not-artifacts/x"):
        with pytest.raises(ValueError):
            conn.get(uri)


def test_wrong_secret_refused(s3_server, conn):
    uri = conn.put(new_key("job1", "s", "p"), b"secret")
    endpoint, access, _ = s3_server
    bad = S3Connector(conn.bucket, endpoint, access, "not-the-secret", prefix="artifacts")
    with pytest.raises(Exception) as err:
        bad.get(uri)
    assert "SignatureDoesNotMatch" in str(err.value) or "AccessDenied" in str(err.value)
    with pytest.raises(Exception):
        bad.put(new_key("job1", "s", "p"), b"forged")


def test_dead_store_fails_fast():
    dead = S3Connector("bucket1", "http://127.0.0.1:9", "a", "b")
    start = time.monotonic()
    with pytest.raises(ArtifactStoreUnavailable, match="127.0.0.1:9"):
        dead.put("job/s/p-x", b"x")
    assert time.monotonic() - start < 15
