import subprocess
import sys
import uuid

import pytest

from omnijobs.artifacts import ShmConnector, new_key


@pytest.fixture
def conn():
    c = ShmConnector(namespace=f"test-{uuid.uuid4().hex}")
    job = uuid.uuid4().hex
    yield c, job
    c.delete_prefix(job)


def test_round_trip_keeps_exact_length(conn):
    c, job = conn
    data = bytes(range(256)) * 17 + b"tail"
    uri = c.put(new_key(job, "s", "p"), data)
    assert uri.startswith("shm://oj") and f"size={len(data)}" in uri
    assert len(urlname(uri)) <= 30
    assert c.get(uri) == data


def test_empty_payload(conn):
    c, job = conn
    assert c.get(c.put(new_key(job, "s", "p"), b"")) == b""


def test_delete_is_idempotent(conn):
    c, job = conn
    uri = c.put(new_key(job, "s", "p"), b"x")
    c.delete(uri)
    c.delete(uri)
    with pytest.raises(FileNotFoundError):
        c.get(uri)
    assert c.list_segments(job) == []


def test_delete_prefix_removes_one_job_only(conn):
    c, job = conn
    other = uuid.uuid4().hex
    for i in range(3):
        c.put(new_key(job, "s", f"p{i}"), b"x")
    kept = c.put(new_key(other, "s", "p"), b"y")
    assert len(c.list_segments(job)) == 3
    assert c.delete_prefix(job) == 3
    assert c.list_segments(job) == []
    assert c.get(kept) == b"y"
    assert c.delete_prefix(other) == 1


def test_foreign_names_refused():
    c = ShmConnector()
    for uri in ("shm://somebody_elses?size=1", "shm://../x?size=1", "file:///tmp/x"):
        with pytest.raises(ValueError):
            c.get(uri)


CHILD = """
import sys
from omnijobs.artifacts import ShmConnector, new_key
c = ShmConnector(namespace=sys.argv[1])
print(c.put(new_key(sys.argv[2], "thinker", "hidden"), b"from the child" * 1000))
"""


def test_segment_outlives_the_creating_process(conn):
    c, job = conn
    child = subprocess.run([sys.executable, "-c", CHILD, c.namespace, job],
                           capture_output=True, text=True, timeout=60, check=True)
    # The child's resource tracker would otherwise unlink the segment and warn about a leak.
    assert "leaked" not in child.stderr, child.stderr
    uri = child.stdout.strip()
    assert c.list_segments(job) == [urlname(uri)]
    assert c.get(uri) == b"from the child" * 1000
    c.delete(uri)
    assert c.list_segments(job) == []


def urlname(uri: str) -> str:
    return uri[len("shm://"):].split("?", 1)[0]
