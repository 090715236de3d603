"""`omnijobs dev`: the whole system on one machine with no servers to install.

The same processes as production, wired to local stand-ins: a SQLite job store, kombu's
file-system broker and the `file` artifact connector, all under one folder. Nothing forks into a
toy mode: the API, stage workers and reconciler are the `omnijobs api|worker|reconciler`
commands, started here as subprocesses with a different environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omnijobs.errors import OmniJobsError
from omnijobs.settings import Settings

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
KEY_FILE = "api-key"
# What `omnijobs --dir <folder> ...` and `omnijobs env --dir <folder>` read: the running deployment's
# settings as OMNIJOBS_ variables, one `NAME='value'` a line (also a shell file: `set -a; . <it>`).
SETTINGS_FILE = "omnijobs.env"


class DevError(OmniJobsError):
    """Dev mode cannot start as asked (unknown pipeline, nothing runnable, a process died)."""


@dataclass
class DevOptions:
    folder: Path
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    pipelines: list[str] = field(default_factory=list)  # empty: every pipeline runnable here
    demo: bool = False
    # Worker processes the stages share (0: one per CPU core); one_per_stage: a process per stage.
    processes: int = 0
    one_per_stage: bool = False


def group_stages(stages: list[str], processes: int) -> list[list[str]]:
    """Stages dealt round-robin into `processes` groups (each `omnijobs worker --stage ... --stage ...`).

    Round-robin, so the stages of one pipeline (listed together) land in different processes and
    a job's stages still overlap across jobs; each stage keeps its own engine, queue and batching.
    """
    n = max(1, min(processes, len(stages)))
    return [group for group in (stages[i::n] for i in range(n)) if group]


def dev_overrides(folder: Path) -> dict[str, object]:
    """The settings that make the production processes run on one machine, under `folder`."""
    folder = folder.resolve()
    return {
        "database_url": f"sqlite:///{folder / 'omnijobs.db'}",
        "broker_url": "filesystem://",
        "broker_dir": folder / "broker",
        "artifacts": "file",
        "artifacts_dir": folder / "artifacts",
    }


def dev_environment(settings: Settings) -> dict[str, str]:
    """What the child processes read: the dev settings as OMNIJOBS_ variables."""
    keys = ("database_url", "broker_url", "broker_dir", "artifacts", "artifacts_dir", "models_dir")
    return {f"OMNIJOBS_{k.upper()}": str(getattr(settings, k)) for k in keys}


def write_settings_file(folder: Path, env: dict[str, str]) -> Path:
    """Keep the deployment's settings in its folder, so clients run elsewhere find the same store and API."""
    import shlex

    path = folder / SETTINGS_FILE
    path.write_text("".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(env.items())))
    path.chmod(0o600)  # it holds the admin API key
    return path


def read_settings_file(folder: Path) -> dict[str, str]:
    """The variables `write_settings_file` wrote; DevError if `omnijobs dev` never ran there."""
    import shlex

    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise DevError(f"no {SETTINGS_FILE} in {folder}: start `omnijobs dev --dir {folder}` first")
    out = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            out[name.strip()] = " ".join(shlex.split(value))
    return out


# ---------------------------------------------------------------- which pipelines can run here


def _extra_installed(extra: str) -> str | None:
    """None if every package of the extra is installed, else the first one missing."""
    from importlib import metadata

    try:
        requirements = metadata.requires("omnijobs") or []
    except metadata.PackageNotFoundError:
        return None  # running from a source tree without metadata: let the worker say what is missing
    for req in requirements:
        name, _, marker = req.partition(";")
        if not re.search(r"""extra\s*==\s*["']""" + re.escape(extra) + r"""["']""", marker):
            continue
        package = re.match(r"[A-Za-z0-9_.-]+", name.strip()).group(0)
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            return package
    return None


def why_not_runnable(spec, models_dir: Path) -> str | None:
    """None if every stage of the pipeline can run here; else why not."""
    from omnijobs.engines.factory import resolve_model_path
    from omnijobs.engines.kinds import engine_kind
    from omnijobs.models.tiny import BUILDERS

    for name, stage in spec.stages.items():
        kind = engine_kind(stage.engine)
        if kind is None:
            return f"stage {name}: unknown engine '{stage.engine}'"
        missing = _extra_installed(kind.extra) if kind.extra else None
        if missing:
            return f"stage {name}: needs the '{kind.extra}' extra ({missing} is not installed)"
        if stage.model and not tiny_builder(stage.model, BUILDERS) and \
                not resolve_model_path(stage.model, models_dir).exists():
            return f"stage {name}: model '{stage.model}' is not under {models_dir} and has no tiny builder"
    return None


def tiny_builder(model: str, builders) -> str | None:
    """The tiny builder whose folder holds this model (a builder may make several, one per subfolder)."""
    for folder in builders:
        if model == folder or model.startswith(folder.rstrip("/") + "/"):
            return folder
    return None


def choose_pipelines(registry, wanted: list[str], models_dir: Path, echo: Callable[[str], None]) -> list:
    if wanted:
        specs = []
        for name in wanted:
            spec = registry.get(name)  # NotFound names the pipeline
            reason = why_not_runnable(spec, models_dir)
            if reason:
                raise DevError(f"pipeline '{name}' cannot run here: {reason}")
            specs.append(spec)
        return specs
    specs = []
    for spec in registry.all():
        reason = why_not_runnable(spec, models_dir)
        if reason:
            echo(f"skipping pipeline {spec.name}: {reason}")
        else:
            specs.append(spec)
    if not specs:
        raise DevError("no pipeline can run here (see the reasons above)")
    return specs


# ---------------------------------------------------------------- processes


class Processes:
    """Child processes, each in its own session so a terminal's Ctrl-C reaches only this supervisor."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def spawn(self, name: str, args: list[str]) -> None:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "omnijobs", *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    # The supervisor runs no threads when it spawns, so preexec_fn is safe here.
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # noqa: PLW1509
        self.procs[name] = (proc, log)

    def dead(self) -> tuple[str, int, str] | None:
        for name, (proc, log) in self.procs.items():
            if proc.poll() is not None:
                return name, proc.returncode, _tail(log)
        return None

    def log_matches(self, name: str, pattern: bytes) -> bool:
        return re.search(pattern, self.procs[name][1].read_bytes()) is not None

    def stop(self, first: list[str] = ()) -> None:
        """SIGTERM (warm shutdown: workers hand back unfinished messages), then SIGKILL after a while."""
        order = [n for n in first if n in self.procs] + [n for n in self.procs if n not in first]
        for name in order:
            proc = self.procs[name][0]
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
            if name in first:
                _wait(proc, STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name in order:
            proc = self.procs[name][0]
            if not _wait(proc, max(0.0, deadline - time.monotonic())):
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the supervisor dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    """Fail before starting anything if the API could not listen there."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise DevError(f"cannot listen on {host}:{port} ({exc.strerror}); pass --port 0 for any free port") from None


# ---------------------------------------------------------------- the command


class _Stop:
    """Set by SIGINT/SIGTERM; every wait of the supervisor checks it."""

    def __init__(self):
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.event.set())

    def sleep(self, seconds: float) -> bool:
        return self.event.wait(seconds)


def prepare(settings: Settings, options: DevOptions, echo: Callable[[str], None]) -> tuple[Settings, list]:
    """Folder, schema and models: what must exist before any process starts."""
    from omnijobs.models.tiny import BUILDERS, build_tiny
    from omnijobs.pipelines import load_registry
    from omnijobs.store.migrate import upgrade

    options.folder.mkdir(parents=True, exist_ok=True)
    if not (options.folder / "omnijobs.db").exists():
        (options.folder / KEY_FILE).unlink(missing_ok=True)  # a key of a job store that is gone
    dev_settings = settings.model_copy(update=dev_overrides(options.folder))
    specs = choose_pipelines(load_registry(dev_settings.pipelines_path), options.pipelines,
                             dev_settings.models_dir, echo)
    upgrade(dev_settings.database_url)
    for consumed in (dev_settings.broker_dir / "processed").glob("*.msg"):  # kept only while a run lasts
        consumed.unlink(missing_ok=True)
    needed = sorted({tiny_builder(s.model, BUILDERS) for spec in specs for s in spec.stages.values()} - {None})
    started = time.monotonic()
    built = build_tiny(dev_settings.models_dir, only=needed)
    if built:
        echo(f"built {len(built)} tiny model(s) under {dev_settings.models_dir} in {time.monotonic() - started:.1f}s")
    return dev_settings, specs


def run_dev(settings: Settings, options: DevOptions, echo: Callable[[str], None] = print) -> int:
    import httpx

    stop = _Stop()
    stop.install()
    if options.port:
        _check_port(options.host, options.port)
    dev_settings, specs = prepare(settings, options, echo)
    folder = options.folder.resolve()
    log_dir = folder / "logs"
    log_dir.mkdir(exist_ok=True)
    # OMNIJOBS_DEV_DIR would make each child read a settings file: the children get their settings here.
    env = {**{k: v for k, v in os.environ.items() if k != "OMNIJOBS_DEV_DIR"}, **dev_environment(dev_settings)}
    # Every process counts into one folder; the API's /metrics adds them up (prometheus multiprocess mode).
    metrics_dir = folder / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counts of an earlier run's processes
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    port = options.port or _free_port(options.host)
    url = f"http://{options.host}:{port}"

    procs = Processes(env, log_dir)
    workers = [f"{spec.name}.{stage}" for spec in specs for stage in spec.stages]
    if options.one_per_stage:
        groups = {f"worker-{stage}": [stage] for stage in workers}
    else:
        groups = {f"workers-{i + 1}": group for i, group in
                  enumerate(group_stages(workers, options.processes or os.cpu_count() or 1))}
    try:
        for name, group in groups.items():
            procs.spawn(name, ["worker", *[a for stage in group for a in ("--stage", stage)], "--device", "cpu"])
        procs.spawn("reconciler", ["reconciler"])
        if importlib.util.find_spec("workers.webhook_worker") is not None:
            procs.spawn("webhooks", ["webhooks"])
        api_key = ensure_api_key(env, folder)  # while the workers load their models
        procs.spawn("api", ["api", "--host", options.host, "--port", str(port)])
        echo(f"starting the API and {len(workers)} stage(s) in {len(groups)} worker process(es) (logs in {log_dir})...")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            if not _wait_ready(procs, client, groups, stop, echo):
                return 130 if stop.event.is_set() else 1
            client_env = {**dev_environment(dev_settings), "OMNIJOBS_URL": url}
            if api_key:
                client_env["OMNIJOBS_API_KEY"] = api_key
            write_settings_file(folder, client_env)
            _banner(echo, url, api_key, specs, folder, options.folder)
            if options.demo:
                from omnijobs.demo_jobs import run_demo_jobs

                return 1 if run_demo_jobs(client, specs, folder / "outputs", echo, stop.event) else 0
            while not stop.sleep(0.5):
                died = procs.dead()
                if died:
                    echo(f"error: {died[0]} exited with {died[1]}; stopping. Its log ends with:\n{died[2]}")
                    return 1
            return 0
    finally:
        echo("stopping...")
        procs.stop(first=["api"])
        echo("stopped")


def _wait_ready(procs: Processes, client, groups: dict[str, list[str]], stop: _Stop, echo) -> bool:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = {(name, stage) for name, group in groups.items() for stage in group}
    api_ready = False
    while time.monotonic() < deadline:
        died = procs.dead()
        if died:
            echo(f"error: {died[0]} exited with {died[1]} while starting. Its log ends with:\n{died[2]}")
            return False
        # Each stage of a worker logs "worker <stage>@<host>:<pid> ready." once it consumes its queue.
        waiting = {(name, stage) for name, stage in waiting
                   if not procs.log_matches(name, rb"worker " + re.escape(stage.encode()) + rb"@\S+ ready\.")}
        if not api_ready:
            try:
                api_ready = client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                pass
        if api_ready and not waiting:
            return True
        if stop.sleep(0.3):
            return False
    echo(f"error: not ready after {READY_TIMEOUT_S:.0f}s (api ready: {api_ready}; "
         f"waiting for {sorted(stage for _, stage in waiting)})")
    return False


def ensure_api_key(env: dict[str, str], folder: Path) -> str | None:
    """The dev folder's API key, made once with `omnijobs keys create` when the API has keys."""
    path = folder / KEY_FILE
    if path.exists():
        return path.read_text().strip() or None
    proc = subprocess.run([sys.executable, "-m", "omnijobs", "keys", "create", "--name", "dev", "--admin", "--json"],
                          check=False, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        if "No such command" in proc.stderr:
            return None  # this version has no API keys: the API is open
        raise DevError(f"could not create an API key: {proc.stderr.strip()[-2000:]}")
    key = json.loads(proc.stdout)["key"]
    for target, text in ((path, key + "\n"), (folder / f"{KEY_FILE}.json", proc.stdout)):  # .json: webhook secret too
        target.write_text(text)
        target.chmod(0o600)
    return key


def _banner(echo, url: str, api_key: str | None, specs: list, folder: Path, given: Path) -> None:
    from omnijobs.demo_jobs import example_request

    auth = ' -H "authorization: Bearer $OMNIJOBS_API_KEY"' if api_key else ""
    echo("")
    echo(f"OmniJobs is running at {url}  (job store, queues and artifacts under {folder})")
    if api_key:
        echo(f"API key (admin): {api_key}   (also in {folder / KEY_FILE})")
    echo(f"pipelines: {', '.join(s.name for s in specs)}  (GET {url}/v1/pipelines for their inputs)")
    echo("off in dev: per-key rate limits (they need Redis); one SQLite writer at a time")
    echo(f"in another shell, for the omnijobs command and curl (settings in {folder / SETTINGS_FILE}):")
    echo(f'  eval "$(omnijobs env --dir {given})"')
    texts = [s for s in specs if all(p.type == "text" for p in s.inputs.values())]
    body = example_request(texts[0]) if texts else None
    if body:
        echo("then submit a job and read it back:")
        echo(f"  omnijobs submit {body['pipeline']} prompt=Hello --wait")
        echo(f"  curl -s -XPOST $OMNIJOBS_URL/v1/jobs -H 'content-type: application/json'{auth} \\")
        echo(f"    -d '{json.dumps(body)}'")
        echo(f"  curl -s $OMNIJOBS_URL/v1/jobs/<id>{auth}")
    echo("Ctrl-C stops everything.")
