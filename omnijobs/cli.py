"""The `omnijobs` command. Each command imports what it needs only when it runs."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from omnijobs.errors import OmniJobsError
from omnijobs.settings import get_settings

app = typer.Typer(help="OmniJobs: durable jobs for any-to-any multimodal models.", no_args_is_help=True)
models_app = typer.Typer(help="Local models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


DEV_DIR = Path(".omnijobs-dev")
# The commands that make a dev folder rather than read one.
_MAKES_DEV_DIR = ("dev", "demo", "env")


@app.callback()
def _root(
    ctx: typer.Context,
    folder: Annotated[Optional[Path], typer.Option(
        "--dir", envvar="OMNIJOBS_DEV_DIR",
        help="use the deployment `omnijobs dev --dir <folder>` runs: its job store, queues, API and key")] = None,
) -> None:
    if folder is not None and ctx.invoked_subcommand not in _MAKES_DEV_DIR:
        from omnijobs.dev import read_settings_file

        os.environ.update(read_settings_file(folder))
        os.environ["OMNIJOBS_DEV_DIR"] = str(folder)
        get_settings.cache_clear()


@app.command()
def env(
    folder: Annotated[Path, typer.Option("--dir", envvar="OMNIJOBS_DEV_DIR", help="the folder of `omnijobs dev`")
                      ] = DEV_DIR,
) -> None:
    """Print `export` lines for the deployment `omnijobs dev` runs: eval "$(omnijobs env)"."""
    import shlex

    from omnijobs.dev import read_settings_file

    for name, value in read_settings_file(folder).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def migrate() -> None:
    """Bring the configured database to the newest schema (alembic upgrade head)."""
    from omnijobs.store.migrate import upgrade

    upgrade(get_settings().database_url)
    typer.echo("database is at the newest schema")


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the HTTP API."""
    import uvicorn

    uvicorn.run("api.main:app", host=host, port=port, workers=workers, log_level="info")


@app.command()
def worker(
    stage: Annotated[list[str], typer.Option(help="<pipeline>.<stage> to serve; repeat to co-locate stages")],
    device: Annotated[str, typer.Option(help="cpu or cuda:N")] = "cpu",
    loglevel: str = "INFO",
) -> None:
    """Run a stage worker: per stage one engine and one batching loop on its queue, all on one device."""
    from workers.stage_worker import run_worker

    _logging(loglevel)
    try:
        run_worker(get_settings(), stage, device, loglevel)
    except OmniJobsError as exc:
        _fail(str(exc), 3)


@app.command()
def reconciler(once: bool = False) -> None:
    """Re-enqueue stage runs whose worker died or whose message was lost."""
    from omnijobs.pipelines import load_registry
    from omnijobs.reconciler import run_forever, sweep
    from omnijobs.store.db import make_engine
    from omnijobs.store.jobs import JobStore
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher
    from workers.queue_probe import probe_for

    _logging()
    settings = get_settings()
    from omnijobs.streaming.chunks import where_streams_run

    store = JobStore(make_engine(settings.database_url, pool_size=2),
                     where_streams_run(settings, load_registry(settings.pipelines_path)))
    celery = make_celery(settings)
    publisher = CeleryPublisher(celery)
    chores = _reconciler_chores(settings, store.engine, celery)
    if once:
        report = sweep(store, publisher, settings.requeue_after_s, probe_for(settings.broker_url))
        for chore in chores:
            chore()
        typer.echo(json.dumps(report.__dict__))
        return
    run_forever(store, publisher, settings.reconcile_interval_s, settings.requeue_after_s, chores,
                probe_for(settings.broker_url))


def _reconciler_chores(settings, engine, celery) -> list:
    """Also in the reconciler's loop: re-send lost webhook deliveries, and expire old artifacts."""
    from omnijobs.retention import sweep_retention
    from omnijobs.store.retention import RetentionStore
    from omnijobs.store.webhooks import WebhookStore
    from omnijobs.webhooks.relay import relay
    from workers.webhook_worker import CeleryDeliveryPublisher

    webhooks, deliveries, retention = WebhookStore(engine), CeleryDeliveryPublisher(celery), RetentionStore(engine)

    def webhook_relay():
        return relay(webhooks, deliveries, settings.requeue_after_s)

    def retention_sweep():
        return sweep_retention(retention, settings)

    return [webhook_relay, retention_sweep]


@app.command()
def webhooks(loglevel: str = "INFO") -> None:
    """Deliver signed webhooks from the webhook queue (and relay due ones from the outbox to it)."""
    from workers.webhook_worker import run_webhook_worker

    _logging(loglevel)
    run_webhook_worker(get_settings(), loglevel)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", envvar="OMNIJOBS_DEV_DIR",
                                         help="dev folder: job store, queues, artifacts, logs")] = DEV_DIR,
    pipeline: Annotated[Optional[list[str]], typer.Option("--pipeline", "-p", help="only these pipelines")] = None,
) -> None:
    """`omnijobs dev --demo`: run everything here, submit a demo job of each pipeline, print the outputs, stop."""
    dev(folder=folder, host="127.0.0.1", port=0, pipeline=pipeline, demo=True)


@app.command()
def dev(
    folder: Annotated[Path, typer.Option("--dir", envvar="OMNIJOBS_DEV_DIR",
                                         help="dev folder: job store, queues, artifacts, logs")] = DEV_DIR,
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port (0: any free port)")] = 8000,
    pipeline: Annotated[Optional[list[str]], typer.Option(
        "--pipeline", "-p", help="serve only these pipelines (default: every one whose models can be built here)")] = None,
    demo: Annotated[bool, typer.Option(help="submit a demo job of each pipeline, print the outputs, then stop")] = False,
    processes: Annotated[int, typer.Option(
        help="worker processes the stages share (0: one per CPU core)", min=0)] = 0,
    one_per_stage: Annotated[bool, typer.Option(
        "--one-per-stage", help="one worker process per stage, as production runs them")] = False,
) -> None:
    """Everything on one machine: SQLite job store, file-system broker, file artifacts, API, reconciler, workers."""
    from omnijobs.dev import DevOptions, run_dev

    _logging("WARNING")
    options = DevOptions(folder=folder, host=host, port=port, pipelines=list(pipeline or []), demo=demo,
                         processes=processes, one_per_stage=one_per_stage)
    raise typer.Exit(run_dev(get_settings(), options, echo=typer.echo))


@models_app.command("pull")
def models_pull(
    target: Annotated[str, typer.Argument(help="a pipeline name (shipped, real/ or loaded) or a hub id")],
    revision: Annotated[Optional[str], typer.Option(help="hub revision (one hub id only)")] = None,
) -> None:
    """Download the hub models a pipeline's stages name (or one hub id) into the hub cache."""
    from omnijobs.engines.hub import ModelNotFound, pull_target

    settings = get_settings()
    try:
        for model, path in pull_target(target, settings, revision):
            typer.echo(f"{model}: {path}")
    except ModelNotFound as exc:
        _fail(str(exc))


@models_app.command("build-tiny")
def build_tiny(
    out: Annotated[Optional[Path], typer.Option(help="models folder (default: OMNIJOBS_MODELS_DIR)")] = None,
    force: bool = False,
) -> None:
    """Build tiny random-weight models of the real classes for every shipped pipeline."""
    from omnijobs.models.tiny import build_tiny as build

    target = out or get_settings().models_dir
    started = time.monotonic()
    built = build(target, force=force)
    for path in built:
        typer.echo(f"built {path}")
    typer.echo(f"{len(built)} model(s) built in {time.monotonic() - started:.1f}s under {target}")


Url = Annotated[str, typer.Option(envvar="OMNIJOBS_URL", help="the API")]
Key = Annotated[Optional[str], typer.Option("--key", envvar="OMNIJOBS_API_KEY", help="API key")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _client(url: str, api_key: str | None):
    from omnijobs.client import Client

    return Client(url, api_key)


@app.command()
def submit(
    pipeline: str,
    values: Annotated[Optional[list[str]], typer.Argument(
        help="input=value (input=@file uploads the file first) or params.<name>=value")] = None,
    wait: Annotated[bool, typer.Option(help="follow the job's events to the end, with progress")] = False,
    idempotency_key: Annotated[Optional[str], typer.Option(
        help="default: a new one per call, so an automatic retry of the request never makes a second job")] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Submit a job to a running API; with --wait, follow it to the end (exit 1 unless it succeeded)."""
    from omnijobs.client import resolve_file_inputs

    inputs, params = {}, {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _fail(f"'{item}' is not key=value")
        value = raw if raw.startswith("@") else _parse_value(raw)
        if key.startswith("params."):
            params[key.removeprefix("params.")] = value
        else:
            inputs[key] = value
    with _client(url, api_key) as client:
        body = {"pipeline": pipeline, "inputs": resolve_file_inputs(client, inputs), "params": params or None}
        job = client.submit(body, idempotency_key)
        if not wait:
            typer.echo(json.dumps(job, indent=2))
            return
        _follow(client, job["id"])


@app.command()
def status(
    job_id: str,
    wait: Annotated[bool, typer.Option(help="follow the job's events to the end, with progress")] = False,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Show a job; with --wait, follow it to the end (exit 1 unless it succeeded)."""
    with _client(url, api_key) as client:
        if wait:
            _follow(client, job_id)
        else:
            typer.echo(json.dumps(client.job(job_id), indent=2))


@app.command()
def cancel(job_id: str, url: Url = DEFAULT_URL, api_key: Key = None) -> None:
    """Cancel a job (its running stages stop at their next step)."""
    with _client(url, api_key) as client:
        job = client.cancel(job_id)
    typer.echo(f"{job['id']}: {job['status']}")


@app.command()
def download(
    job_id: str,
    name: Annotated[Optional[str], typer.Argument(help="the output (default: every file output of the job)")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="file to write (one output only)")] = None,
    url: Url = DEFAULT_URL,
    api_key: Key = None,
) -> None:
    """Save a job's file outputs: `<name>.<ext>` in this folder, or -o FILE."""
    from omnijobs.client import output_filename

    with _client(url, api_key) as client:
        job = client.job(job_id)
        files = [n for n, v in (job.get("outputs") or {}).items() if isinstance(v, dict) and "url" in v]
        if name is None:
            if not files:
                _fail(f"job {job_id} has no file outputs (status: {job['status']})", 1)
            if output is not None and len(files) > 1:
                _fail(f"-o takes one output; name one of: {', '.join(files)}")
        names = [name] if name else files
        for n in names:
            target = output or Path(output_filename(job, n))
            size = client.download(job_id, n, target)
            typer.echo(f"{target} ({size} bytes)")


@app.command()
def pipelines(
    url: Url = DEFAULT_URL,
    api_key: Key = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the API's pipelines: stages and inputs."""
    with _client(url, api_key) as client:
        specs = client.pipelines()
    if as_json:
        typer.echo(json.dumps(specs, indent=2))
        return
    for spec in specs:
        inputs = ", ".join(f"{n}{'' if p.get('required', True) else '?'}: {p.get('type')}"
                           for n, p in (spec.get("inputs") or {}).items())
        stages = ", ".join(s["name"] for s in spec.get("stages") or [])
        typer.echo(f"{spec['name']:20} stages: {stages:28} inputs: {inputs}")


def _follow(client, job_id: str) -> None:
    """Progress from the job's events: a bar per stage, moved by its denoise steps or generated tokens."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    first = client.job(job_id)
    # A token-streaming stage's bar runs to its max_tokens (it may stop earlier, at end of text).
    max_tokens = {s["name"]: (s.get("params") or {}).get("max_tokens") for s in first.get("stages") or []}
    job = None
    columns = (TextColumn("{task.description:24}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[unit]} {task.fields[state]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bars:
        tasks: dict[str, int] = {}

        def bar(name: str) -> int:
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=1, state="", unit="")
            return tasks[name]

        for event, data in client.events(job_id):
            if event == "stage":
                task, progress = bar(data["stage"]), data.get("progress") or {}
                fields = {"state": data["status"]}
                if progress.get("steps"):
                    fields |= {"total": progress["steps"], "completed": progress.get("step", 0), "unit": "steps"}
                if data["status"] in ("succeeded", "skipped"):
                    fields["completed"] = bars.tasks[task].total
                bars.update(task, **fields)
            elif event == "delta" and data.get("stage"):
                task = bar(data["stage"])
                state = bars.tasks[task]
                done = state.completed + len(data.get("token_ids") or [])
                total = max(done, max_tokens.get(data["stage"]) or done)
                bars.update(task, total=total, completed=done, unit="tokens")
            elif event == "end":
                job = data
    if job is None:
        _fail(f"the event stream of job {job_id} ended early", 1)
    typer.echo(json.dumps({k: job[k] for k in ("id", "status", "outputs", "error")}, indent=2))
    if job["status"] != "succeeded":
        raise typer.Exit(1)


def _shown_database() -> str:
    from sqlalchemy.engine import make_url

    return make_url(get_settings().database_url).render_as_string(hide_password=True)


def _key_store():
    from omnijobs.store.db import make_engine
    from omnijobs.store.keys import KeyStore

    return KeyStore(make_engine(get_settings().database_url, pool_size=1))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what the key is for")],
    admin: Annotated[bool, typer.Option("--admin", help="may use the admin routes and see every job")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create an API key. The key and its webhook secret are printed once; only a hash is kept."""
    new = _key_store().create(name, admin=admin)
    typer.echo(f"created in the job store {_shown_database()}", err=True)
    if as_json:
        typer.echo(json.dumps({"id": new.id, "name": new.info.name, "admin": new.info.admin, "key": new.key,
                               "webhook_secret": new.webhook_secret}))
        return
    typer.echo(f"id:             {new.id}\nname:           {new.info.name}\nadmin:          {new.info.admin}")
    typer.echo(f"key:            {new.key}\nwebhook secret: {new.webhook_secret}")
    typer.echo("Store both now: they are not shown again.", err=True)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List API keys (never the keys themselves)."""
    keys = _key_store().list()
    if as_json:
        typer.echo(json.dumps([{"id": k.id, "name": k.name, "admin": k.admin, "prefix": k.prefix,
                                "created_at": k.created_at.isoformat(),
                                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]))
        return
    for k in keys:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        typer.echo(f"{k.id}  {k.prefix}…  {'admin' if k.admin else 'user ':5}  {state:24}  {k.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    info = _key_store().revoke(key_id)
    typer.echo(f"revoked {info.id} ({info.name})")


def _parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _database_failure(exc: BaseException) -> str | None:
    """One line for a database that is missing, unreachable or has no schema; None for anything else."""
    try:
        from sqlalchemy import exc as sa
        from sqlalchemy.engine import make_url
    except ImportError:
        return None
    if not isinstance(exc, sa.DBAPIError | sa.ArgumentError | sa.NoSuchModuleError):
        return None
    url = get_settings().database_url
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except sa.ArgumentError:
        return f"OMNIJOBS_DATABASE_URL is not a database URL: {url!r}"
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split()).split(" [SQL:")[0][:300]
    if isinstance(exc, sa.ProgrammingError | sa.OperationalError) and (
            "no such table" in reason or "does not exist" in reason and "relation" in reason):
        line = f"the database {shown} has no OmniJobs tables: run `omnijobs migrate` ({reason})"
    elif isinstance(exc, sa.DBAPIError):
        line = f"cannot use the database {shown}: {reason}"
    else:
        line = f"OMNIJOBS_DATABASE_URL {shown}: {reason}"
    if "OMNIJOBS_DEV_DIR" not in os.environ and (DEV_DIR / "omnijobs.env").is_file():
        line += f" (omnijobs dev keeps its settings in {DEV_DIR}: add --dir {DEV_DIR}, or eval \"$(omnijobs env)\")"
    return line


def main() -> None:
    from omnijobs.client import ApiError

    try:
        app()
    except (OmniJobsError, ApiError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1 if isinstance(exc, ApiError) else 2)
    except Exception as exc:
        line = _database_failure(exc)
        if line is None:
            raise
        typer.echo(f"error: {line}", err=True)
        sys.exit(2)
