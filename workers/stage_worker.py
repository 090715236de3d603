"""`omnijobs worker --stage <pipeline>.<stage> --device cpu|cuda:N`.

One process = one engine = one device. The engine is loaded once, before the worker consumes;
messages of the stage's queue are pulled in batches (celery-batches) and each batch goes to
StageRunner, which is where the work happens.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

from omnijobs.errors import OmniJobsError
from omnijobs.messages import STAGE_TASK
from omnijobs.settings import Settings

log = logging.getLogger("omnijobs.worker")

_DEVICE = re.compile(r"^(cpu|cuda:(\d+))$")


class WorkerStartError(OmniJobsError):
    """The worker cannot start as asked (unknown stage, missing GPU, missing model)."""


def pin_device(device: str) -> None:
    """Narrow the process to one GPU. Must run before torch is imported."""
    m = _DEVICE.match(device)
    if not m:
        raise WorkerStartError(f"--device must be 'cpu' or 'cuda:N', got '{device}'")
    if "torch" in sys.modules:
        raise WorkerStartError("torch was imported before the device was pinned")
    if m.group(2) is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = m.group(2)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        raise WorkerStartError(
            f"--device {device}: no such GPU here (CUDA available: {torch.cuda.is_available()}); "
            "use --device cpu or a GPU index that exists"
        )


def build_runner(settings: Settings, registry, spec, stage_name: str, device: str, worker_name: str, publisher):
    """Load the engine (once, on its device) and the store: a ready StageRunner."""
    from omnijobs.artifacts.values import StageValues
    from omnijobs.engines.factory import create_engine
    from omnijobs.engines.torch_runtime import configure_threads
    from omnijobs.retry import RetryPolicy
    from omnijobs.runner import CancelFlags, ProgressReporter, StageRunner
    from omnijobs.streaming import delta_sink
    from omnijobs.store.db import make_engine
    from omnijobs.store.jobs import JobStore

    configure_threads(settings.torch_threads)
    check_device(device)
    flags = CancelFlags()
    store = JobStore(make_engine(settings.database_url, pool_size=2), registry)
    engine = create_engine(spec.stage(stage_name), device, settings.models_dir, should_stop=flags.should_stop,
                           report_progress=ProgressReporter(store).report,
                           emit_delta=delta_sink(settings, stage_name))
    engine.load()
    return StageRunner(
        spec, stage_name, engine, store, publisher, worker_name,
        lease_s=settings.lease_grace_s,
        policy=RetryPolicy(settings.retry_backoff_s, settings.retry_backoff_max_s),
        cancel_flags=flags,
        values=StageValues(settings),
    )


def find_stage(registry, stage_ref: str):
    """(pipeline spec, stage spec) for "<pipeline>.<stage>", or a start error listing the known ones."""
    pipeline_name, _, stage_name = stage_ref.partition(".")
    try:
        spec = registry.get(pipeline_name)
        return spec, spec.stages[stage_name]
    except (KeyError, OmniJobsError):
        known = ", ".join(f"{p.name}.{s}" for p in registry.all() for s in p.stages)
        raise WorkerStartError(f"unknown stage '{stage_ref}' (known: {known})") from None


def run_worker(settings: Settings, stage_ref: str, device: str = "cpu", loglevel: str = "INFO") -> None:
    pin_device(device)
    from celery_batches import Batches

    from omnijobs.errors import EngineDead
    from omnijobs.pipelines import load_registry
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    registry = load_registry(settings.pipelines_path)
    spec, stage = find_stage(registry, stage_ref)
    hostname = settings.worker_hostname or socket.gethostname()
    worker_name = f"{stage_ref}@{hostname}:{os.getpid()}"
    app = make_celery(settings, prefetch=stage.batch.max_size)
    runner = build_runner(settings, registry, spec, stage.name, device, worker_name, CeleryPublisher(app))
    queue = spec.queue(stage.name)
    workers, beat = register_worker(settings, worker_name, hostname, stage_ref, queue, device, stage)

    @app.task(
        name=STAGE_TASK,
        base=Batches,
        flush_every=stage.batch.max_size,
        flush_interval=max(stage.batch.max_wait_ms, 1) / 1000.0,
        acks_late=True,
    )
    def run_stage(requests):
        workers.batch_started(worker_name, len(requests))
        try:
            report = runner.run_batch([(r.args[0], int(r.args[1])) for r in requests])
            workers.batch_done(worker_name, report.succeeded, report.failed)
        except EngineDead:
            log.exception("engine is dead; exiting so the supervisor restarts the worker")
            os._exit(75)

    log.info("worker %s: engine %s loaded on %s, consuming %s", worker_name, stage.engine, device, queue)
    try:
        app.Worker(
            hostname=f"{stage_ref}@{hostname}.{os.getpid()}",
            queues=[queue],
            pool="solo",
            concurrency=1,
            loglevel=loglevel,
            without_gossip=True,
            without_mingle=True,
        ).start()
    finally:
        beat.set()
        workers.stopped(worker_name)


def register_worker(settings: Settings, name: str, host: str, stage_ref: str, queue: str, device: str, stage):
    """Enter the worker in the registry the admin API reads, and heartbeat it from a thread."""
    from omnijobs.store.db import make_engine
    from omnijobs.store.workers import WorkerInfo, WorkerRegistry

    workers = WorkerRegistry(make_engine(settings.database_url, pool_size=1))
    workers.register(WorkerInfo(name, host, os.getpid(), stage_ref, queue, device, str(stage.engine),
                                str(stage.model) if stage.model else None))
    return workers, workers.start_heartbeat(name, settings.worker_heartbeat_s)
