"""Process-level promises: the API never imports torch; a worker refuses a device or stage it lacks."""

from __future__ import annotations

import subprocess
import sys

from tests.cluster import REPO


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)


def test_api_does_not_import_torch(settings_env):
    import os

    code = "import sys; from api.app import create_app; create_app(); print('torch' in sys.modules)"
    out = _run(["-c", code], {**os.environ, **settings_env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_worker_refuses_missing_gpu_and_unknown_stage(settings_env):
    import os

    env = {**os.environ, **settings_env}
    gpu = _run(["-m", "omnijobs", "worker", "--stage", "chat.generate", "--device", "cuda:0"], env)
    assert gpu.returncode == 3 and "no such GPU here" in gpu.stderr
    stage = _run(["-m", "omnijobs", "worker", "--stage", "chat.nope"], env)
    assert stage.returncode == 3 and "unknown stage 'chat.nope'" in stage.stderr and "chat.generate" in stage.stderr
    bad = _run(["-m", "omnijobs", "worker", "--stage", "chat.generate", "--device", "gpu7"], env)
    assert bad.returncode == 3 and "--device must be" in bad.stderr
