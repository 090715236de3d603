from pathlib import Path

import pytest

from omnijobs.artifacts import FileConnector, new_key


@pytest.fixture
def conn(tmp_path: Path) -> FileConnector:
    return FileConnector(tmp_path / "artifacts")


def test_round_trip(conn: FileConnector):
    key = new_key("job1", "thinker", "hidden", ".bin")
    uri = conn.put(key, b"\x00payload", "application/octet-stream")
    assert uri.startswith("file:///") and uri.endswith(".bin")
    assert conn.get(uri) == b"\x00payload"
    assert not list(Path(conn.root, "job1", "thinker").glob(".tmp-*"))


def test_keys_are_not_guessable():
    a, b = new_key("j", "s", "p"), new_key("j", "s", "p")
    assert a != b and a.startswith("j/s/p-") and len(a) - len("j/s/p-") >= 20
    with pytest.raises(ValueError):
        new_key("j", "../s", "p")


def test_delete_is_idempotent(conn: FileConnector):
    uri = conn.put(new_key("job1", "s", "p"), b"x")
    conn.delete(uri)
    conn.delete(uri)
    with pytest.raises(FileNotFoundError):
        conn.get(uri)


def test_delete_prefix_removes_one_job_only(conn: FileConnector):
    mine = [conn.put(new_key("ab", "s", f"p{i}"), b"x") for i in range(3)]
    other = conn.put(new_key("abc", "s", "p"), b"y")
    assert conn.delete_prefix("ab") == 3
    assert conn.delete_prefix("ab") == 0
    assert all(not Path(u[len("file://"):]).exists() for u in mine)
    assert conn.get(other) == b"y"


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "job/../../outside"])
def test_put_outside_root_refused(conn: FileConnector, bad: str):
    with pytest.raises(ValueError):
        conn.put(bad, b"x")


def test_uri_outside_root_refused(conn: FileConnector, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    for uri in (secret.as_uri(), conn.root.as_uri() + "/../secret.txt", "file://evil.host/etc/passwd"):
        with pytest.raises(ValueError):
            conn.get(uri)
        with pytest.raises(ValueError):
            conn.delete(uri)
    with pytest.raises(ValueError):
        conn.delete_prefix("..")
    assert secret.exists()
