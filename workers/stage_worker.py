"""`omnijobs worker --stage <pipeline>.<stage> --device cpu|cuda:N`.

One process = one device; by default one stage (one engine), or several co-located stages, each
with its own engine, queue and batching loop. Engines are loaded once, before the worker
consumes; messages of each stage queue are pulled in batches (workers/consumer.py) and each batch
goes to StageRunner, which is where the work happens.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import threading

from omnijobs.errors import OmniJobsError
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
    from omnijobs.streaming.chunks import chunk_streams
    from omnijobs.store.db import make_engine
    from omnijobs.store.jobs import JobStore

    configure_threads(settings.torch_threads)
    check_device(device)
    flags = CancelFlags()
    store = JobStore(make_engine(settings.database_url, pool_size=2), registry)
    from omnijobs.engines.choice import choose_engine

    stage = choose_engine(spec.stage(stage_name), settings.ar_engine)  # vLLM where installed, for the AR kinds
    values = StageValues(settings)
    engine = create_engine(stage, device, settings.models_dir, should_stop=flags.should_stop,
                           report_progress=ProgressReporter(store).report,
                           emit_delta=delta_sink(settings, stage_name),
                           chunks=chunk_streams(settings, spec, stage_name, values))
    engine.load()
    return StageRunner(
        spec, stage_name, engine, store, publisher, worker_name,
        lease_s=settings.lease_grace_s,
        policy=RetryPolicy(settings.retry_backoff_s, settings.retry_backoff_max_s),
        cancel_flags=flags,
        values=values,
        events=job_events(settings, stage_name),
    )


def job_events(settings: Settings, stage_name: str):
    """The channel that tells live readers a batch changed their jobs (None without Redis)."""
    from omnijobs.streaming import ChannelConfig, DeltaSink

    config = ChannelConfig.from_settings(settings)
    return DeltaSink(config, stage_name) if config.redis_url else None


def find_stage(registry, stage_ref: str):
    """(pipeline spec, stage spec) for "<pipeline>.<stage>", or a start error listing the known ones."""
    pipeline_name, _, stage_name = stage_ref.partition(".")
    try:
        spec = registry.get(pipeline_name)
        return spec, spec.stages[stage_name]
    except (KeyError, OmniJobsError):
        known = ", ".join(f"{p.name}.{s}" for p in registry.all() for s in p.stages)
        raise WorkerStartError(f"unknown stage '{stage_ref}' (known: {known})") from None


def run_worker(settings: Settings, stage_refs: str | list[str], device: str = "cpu", loglevel: str = "INFO") -> None:
    """Serve one or more stages from this process: each its own engine, queue and batching loop.

    Co-locating small stages (on one GPU, or a laptop) costs one process instead of one per stage;
    every stage still batches on its own.
    """
    pin_device(device)
    from omnijobs.pipelines import load_registry
    from workers.celery_app import make_celery
    from workers.continuous import ContinuousLoop, is_continuous
    from workers.publisher import CeleryPublisher

    refs = [stage_refs] if isinstance(stage_refs, str) else list(dict.fromkeys(stage_refs))
    if not refs:
        raise WorkerStartError("give at least one --stage <pipeline>.<stage>")
    from omnijobs.streaming.chunks import where_streams_run

    registry = where_streams_run(settings, load_registry(settings.pipelines_path))
    stages = [find_stage(registry, ref) for ref in refs]
    hostname = settings.worker_hostname or socket.gethostname()
    app = make_celery(settings)
    publisher = CeleryPublisher(app)
    stop = threading.Event()
    events = _task_events(settings, app, f"{'+'.join(refs)}@{hostname}:{os.getpid()}")
    loops = []
    for ref, (spec, stage) in zip(refs, stages, strict=True):
        worker_name = f"{ref}@{hostname}:{os.getpid()}"
        runner = build_runner(settings, registry, spec, stage.name, device, worker_name, publisher)
        queue = spec.queue(stage.name)
        hosted = runner.engine.ctx.stage  # with the engine kind this worker chose
        workers, beat = register_worker(settings, worker_name, hostname, ref, queue, device, hosted)
        loop_class = ContinuousLoop if is_continuous(runner.engine) else _StageLoop
        extra = {"task_events": events} if loop_class is _StageLoop else {}
        loops.append(loop_class(app, ref, queue, stage, runner, workers, worker_name, beat, stop,
                                polled=settings.broker_url.startswith("filesystem://"), **extra))
        log.info("worker %s: engine %s loaded on %s, consuming %s", worker_name, hosted.engine, device, queue)
    _stop_on_signals(stop)
    threads = [threading.Thread(target=loop.run, name=f"stage-{loop.ref}") for loop in loops]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    finally:
        stop.set()
        for loop in loops:
            loop.close()
        if events is not None:
            events.offline()
            events.close()


def _task_events(settings: Settings, app, hostname: str):
    """Celery task events for Flower, when asked for (OMNIJOBS_TASK_EVENTS)."""
    if not settings.task_events:
        return None
    from workers.task_events import TaskEvents

    events = TaskEvents(app, hostname=hostname)
    events.online()
    return events


class _StageLoop:
    """One stage's consumer: batches from its queue to its runner, and the operator counters."""

    def __init__(self, app, ref, queue, stage, runner, workers, worker_name, beat, stop, polled: bool,
                 task_events=None):
        from workers.consumer import BatchConsumer

        self.ref, self.runner, self.workers, self.worker_name, self.beat = ref, runner, workers, worker_name, beat
        self.consumer = BatchConsumer(app, queue, stage.batch.max_size, stage.batch.max_wait_ms, self.handle, stop,
                                      idle_poll_backoff=polled, on_ready=self._ready, task_events=task_events)

    def _ready(self) -> None:
        # Test fixtures and operators wait for this line.
        log.info("worker %s ready.", self.worker_name)

    def run(self) -> None:
        try:
            self.consumer.run()
        except BaseException:
            log.exception("stage loop %s stopped", self.ref)
            self.consumer.stop.set()
            raise

    def handle(self, deliveries) -> None:
        from omnijobs.errors import EngineDead, StoreUnavailable
        from workers.consumer import ClaimUnavailable

        try:
            report = self.runner.run_batch([(d.run_id, d.attempt) for d in deliveries])
        except StoreUnavailable as exc:
            raise ClaimUnavailable(str(exc)) from exc
        except EngineDead:
            log.exception("engine is dead; exiting so the supervisor restarts the worker")
            os._exit(75)
        except Exception:
            # The runs were claimed: their leases run out and the reconciler retries them. The loop
            # itself must go on (a database outage mid-batch must not stop the worker).
            log.exception("batch of %s failed outside its runs", self.ref)
            return
        if report.claimed:
            # Counters for operators, off the path between message and claim.
            self.workers.batch_done(self.worker_name, report.succeeded, report.failed, report.batch_sizes[-1])

    def close(self) -> None:
        self.beat.set()
        self.workers.stopped(self.worker_name)


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: finish the batch in hand, acknowledge it, then exit."""

    def _handler(signum, _frame):
        if stop.is_set():  # a second signal: leave now; unacknowledged messages come back
            os._exit(1)
        log.info("signal %s: stopping after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def register_worker(settings: Settings, name: str, host: str, stage_ref: str, queue: str, device: str, stage):
    """Enter the worker in the registry the admin API reads, and heartbeat it from a thread."""
    from omnijobs.store.db import make_engine
    from omnijobs.store.workers import WorkerInfo, WorkerRegistry

    workers = WorkerRegistry(make_engine(settings.database_url, pool_size=1))
    workers.register(WorkerInfo(name, host, os.getpid(), stage_ref, queue, device, str(stage.engine),
                                str(stage.model) if stage.model else None))
    return workers, workers.start_heartbeat(name, settings.worker_heartbeat_s)
