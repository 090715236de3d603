"""Stage models given as hub ids: found in a hub cache laid out as huggingface_hub lays it out.

Each check runs in a fresh process, since huggingface_hub reads HF_HUB_CACHE when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.cluster import REPO

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root, repo_id: str) -> str:
    """A cache holding one snapshot of repo_id: blobs, snapshots/<commit> links, refs/main."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    blob = folder / "blobs" / "c0ffee"
    blob.write_text(json.dumps({"model_type": "qwen2"}))
    (snapshot / "config.json").symlink_to(blob)
    return str(snapshot)


def run(code: str, cache, models, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
            "OMNIJOBS_MODELS_DIR": str(models), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=REPO,
                          timeout=120)


def test_a_hub_id_resolves_to_its_cached_snapshot(tmp_path):
    snapshot = hub_cache(tmp_path / "hub", "Org/Tiny-Model")
    (tmp_path / "models" / "tiny" / "qwen2").mkdir(parents=True)
    proc = run("from omnijobs.engines.factory import require_model_path as r; from pathlib import Path;"
               "m = Path(__import__('os').environ['OMNIJOBS_MODELS_DIR']);"
               "print(r('Org/Tiny-Model', m)); print(r('tiny/qwen2', m))", tmp_path / "hub", tmp_path / "models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[0] == snapshot
    # A folder under the models dir wins over the hub, though "tiny/qwen2" looks like an id.
    assert lines[1] == str(tmp_path / "models" / "tiny" / "qwen2")


def test_an_absent_hub_id_fails_naming_the_id_and_the_cache(tmp_path):
    hub_cache(tmp_path / "hub", "Org/Other")
    proc = run("from omnijobs.engines.factory import require_model_path as r; from pathlib import Path;"
               "r('Org/Missing-7B', Path('/nonexistent-models'))", tmp_path / "hub", tmp_path / "models")
    assert proc.returncode != 0
    assert "ModelNotFound" in proc.stderr and "'Org/Missing-7B'" in proc.stderr
    assert str(tmp_path / "hub") in proc.stderr and "omnijobs models pull Org/Missing-7B" in proc.stderr


def test_models_pull_finds_a_cached_model_offline_and_names_what_it_cannot_fetch(tmp_path):
    snapshot = hub_cache(tmp_path / "hub", "Org/Tiny-Model")
    pull = "from omnijobs.cli import main; import sys; sys.argv = ['omnijobs', 'models', 'pull', %r]; main()"
    ok = run(pull % "Org/Tiny-Model", tmp_path / "hub", tmp_path / "models")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"Org/Tiny-Model: {snapshot}"
    # A shipped real-checkpoint pipeline: its hub model is named, offline and uncached.
    missing = run(pull % "qwen2_5_vl_7b", tmp_path / "hub", tmp_path / "models")
    assert missing.returncode == 2
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in missing.stderr
    bad = run(pull % "no-such-thing", tmp_path / "hub", tmp_path / "models")
    assert bad.returncode == 2 and "neither a pipeline nor a hub id" in bad.stderr
