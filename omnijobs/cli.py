"""The `omnijobs` command. Each command imports what it needs only when it runs."""

from __future__ import annotations

import json
import logging
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
    stage: Annotated[str, typer.Option(help="<pipeline>.<stage> to serve")],
    device: Annotated[str, typer.Option(help="cpu or cuda:N")] = "cpu",
    loglevel: str = "INFO",
) -> None:
    """Run one stage worker: one engine, one device, batch-pulling its stage queue."""
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

    _logging()
    settings = get_settings()
    store = JobStore(make_engine(settings.database_url, pool_size=2), load_registry(settings.pipelines_path))
    celery = make_celery(settings)
    publisher = CeleryPublisher(celery)
    chores = _reconciler_chores(settings, store.engine, celery)
    if once:
        report = sweep(store, publisher, settings.requeue_after_s)
        for chore in chores:
            chore()
        typer.echo(json.dumps(report.__dict__))
        return
    run_forever(store, publisher, settings.reconcile_interval_s, settings.requeue_after_s, chores)


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
    folder: Annotated[Path, typer.Option("--dir", help="dev folder: job store, queues, artifacts, logs")] = Path(
        ".omnijobs-dev"),
    pipeline: Annotated[Optional[list[str]], typer.Option("--pipeline", "-p", help="only these pipelines")] = None,
) -> None:
    """`omnijobs dev --demo`: run everything here, submit a demo job of each pipeline, print the outputs, stop."""
    dev(folder=folder, host="127.0.0.1", port=0, pipeline=pipeline, demo=True)


@app.command()
def dev(
    folder: Annotated[Path, typer.Option("--dir", help="dev folder: job store, queues, artifacts, logs")] = Path(
        ".omnijobs-dev"),
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port (0: any free port)")] = 8000,
    pipeline: Annotated[Optional[list[str]], typer.Option(
        "--pipeline", "-p", help="serve only these pipelines (default: every one whose models can be built here)")] = None,
    demo: Annotated[bool, typer.Option(help="submit a demo job of each pipeline, print the outputs, then stop")] = False,
) -> None:
    """Everything on one machine: SQLite job store, file-system broker, file artifacts, API, reconciler, workers."""
    from omnijobs.dev import DevOptions, run_dev

    _logging("WARNING")
    options = DevOptions(folder=folder, host=host, port=port, pipelines=list(pipeline or []), demo=demo)
    raise typer.Exit(run_dev(get_settings(), options, echo=typer.echo))


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


@app.command()
def submit(
    pipeline: str,
    values: Annotated[Optional[list[str]], typer.Argument(help="input=value or params.<name>=value")] = None,
    wait: bool = False,
    url: Annotated[str, typer.Option(envvar="OMNIJOBS_URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option("--key", envvar="OMNIJOBS_API_KEY", help="API key")] = None,
) -> None:
    """Submit a job to a running API; with --wait, follow it to the end."""
    import httpx

    inputs, params = {}, {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep:
            _fail(f"'{item}' is not key=value")
        value = _parse_value(raw)
        if key.startswith("params."):
            params[key.removeprefix("params.")] = value
        else:
            inputs[key] = value
    body = {"pipeline": pipeline, "inputs": inputs, "params": params or None}
    resp = httpx.post(f"{url}/v1/jobs", json=body, timeout=30, headers=_auth(api_key))
    if resp.status_code >= 400:
        _fail(resp.text, 1)
    job = resp.json()
    if not wait:
        typer.echo(json.dumps(job, indent=2))
        return
    _follow(url, job["id"], api_key)


@app.command()
def status(
    job_id: str,
    url: Annotated[str, typer.Option(envvar="OMNIJOBS_URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option("--key", envvar="OMNIJOBS_API_KEY", help="API key")] = None,
) -> None:
    """Show a job."""
    import httpx

    resp = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30, headers=_auth(api_key))
    if resp.status_code >= 400:
        _fail(resp.text, 1)
    typer.echo(json.dumps(resp.json(), indent=2))


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _follow(url: str, job_id: str, api_key: str | None = None) -> None:
    import httpx

    with typer.progressbar(length=100, label=job_id) as bar:
        done = 0
        while True:
            job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30, headers=_auth(api_key)).json()
            fraction = int(job["progress"]["fraction"] * 100)
            bar.update(fraction - done)
            done = fraction
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.3)
    typer.echo(json.dumps({k: job[k] for k in ("id", "status", "outputs", "error")}, indent=2))
    if job["status"] != "succeeded":
        raise typer.Exit(1)


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


def main() -> None:
    try:
        app()
    except OmniJobsError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
