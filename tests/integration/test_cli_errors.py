"""The command line's failures are one line naming the cause, never a traceback (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cluster import REPO

CLOSED = "postgresql+psycopg://nobody@127.0.0.1:9/nowhere"


def omnijobs(*args: str, cwd, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OMNIJOBS_")}
    return subprocess.run([sys.executable, "-m", "omnijobs", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**base, "PYTHONPATH": str(REPO), **env})


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr


@pytest.mark.parametrize("args", [["keys", "list"], ["keys", "create", "--name", "x"], ["migrate"]])
def test_unreachable_database(tmp_path, args):
    line = one_line(omnijobs(*args, cwd=tmp_path, OMNIJOBS_DATABASE_URL=CLOSED))
    assert "cannot use the database postgresql+psycopg://nobody@127.0.0.1:9/nowhere" in line, line


def test_database_without_schema_says_migrate(tmp_path):
    line = one_line(omnijobs("keys", "list", cwd=tmp_path, OMNIJOBS_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db"))
    assert "has no OmniJobs tables: run `omnijobs migrate`" in line, line


def test_a_dev_folder_in_this_directory_is_pointed_at(tmp_path):
    from omnijobs.dev import write_settings_file

    folder = tmp_path / ".omnijobs-dev"
    folder.mkdir()
    db = f"sqlite:///{folder}/omnijobs.db"
    write_settings_file(folder, {"OMNIJOBS_DATABASE_URL": db, "OMNIJOBS_URL": "http://127.0.0.1:9"})
    line = one_line(omnijobs("keys", "list", cwd=tmp_path, OMNIJOBS_DATABASE_URL=CLOSED))
    assert "add --dir .omnijobs-dev" in line, line

    # With --dir the same command uses the folder's store (migrated here), and `env` prints it for a shell.
    assert omnijobs("--dir", str(folder), "migrate", cwd=tmp_path).returncode == 0
    created = omnijobs("--dir", str(folder), "keys", "create", "--name", "me", cwd=tmp_path)
    assert created.returncode == 0 and f"created in the job store {db}" in created.stderr, created.stderr
    exported = omnijobs("env", "--dir", str(folder), cwd=tmp_path)
    assert f"export OMNIJOBS_DATABASE_URL={db}" in exported.stdout, exported.stdout
    shell = subprocess.run(["bash", "-c", f'eval "$({sys.executable} -m omnijobs env --dir {folder})"; '
                                          'echo "$OMNIJOBS_DATABASE_URL"'],
                           cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert shell.stdout.strip() == db, shell.stderr
    # The API of that folder is gone: one line saying so.
    line = one_line(omnijobs("--dir", str(folder), "status", "abc", cwd=tmp_path))
    assert "cannot reach the API at http://127.0.0.1:9" in line, line


def test_dir_without_settings(tmp_path):
    line = one_line(omnijobs("--dir", str(tmp_path / "nope"), "keys", "list", cwd=tmp_path))
    assert "start `omnijobs dev --dir" in line, line
