"""Running one batch of a stage: claim, resolve inputs, one engine call, record, hand on.

This is everything a stage worker does per batch; the queue side only feeds it messages.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from omnijobs import metrics
from omnijobs.artifacts.base import free_chunks
from omnijobs.artifacts.refs import is_ref, refs_in
from omnijobs.artifacts.values import StageValues
from omnijobs.cleanup import clean_finished_jobs
from omnijobs.dispatch import Publisher, publish_committed
from omnijobs.engines.base import Engine, StageRequest
from omnijobs.errors import EngineDead, RetryableStageError, StageError, StoreUnavailable
from omnijobs.pipelines import graph
from omnijobs.pipelines.spec import PipelineSpec
from omnijobs.retry import RetryPolicy, error_record
from omnijobs.store.jobs import BatchRecord, JobStore
from omnijobs.store.records import ClaimedRun

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    received: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class CancelFlags:
    """Run ids of the current batch whose jobs were canceled; engines ask between steps."""

    def __init__(self) -> None:
        self._ids: frozenset[str] = frozenset()

    def should_stop(self, run_id: str) -> bool:
        return run_id in self._ids

    def set(self, ids: set[str]) -> None:
        self._ids = frozenset(ids)


class ProgressReporter:
    """Engines report every step; a run's row is written at most once per interval (and at the end)."""

    def __init__(self, store: JobStore, interval_s: float = 0.5):
        self.store = store
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def report(self, run_id: str, progress: dict) -> None:
        now = time.monotonic()
        last_step = progress.get("step") is not None and progress.get("step") == progress.get("steps")
        if not last_step and now - self._last.get(run_id, 0.0) < self.interval_s:
            return
        self._last[run_id] = now
        try:
            self.store.set_progress(run_id, progress)
        except Exception:  # progress is a courtesy; the run goes on
            log.exception("could not record progress of run %s", run_id)


class StageRunner:
    def __init__(
        self,
        spec: PipelineSpec,
        stage: str,
        engine: Engine,
        store: JobStore,
        publisher: Publisher,
        worker: str,
        *,
        lease_s: float = 30.0,
        policy: RetryPolicy | None = None,
        on_timeout=None,
        cancel_flags: CancelFlags | None = None,
        values: StageValues | None = None,
        events=None,
    ):
        self.spec = spec
        self.stage = spec.stage(stage)
        self.engine = engine
        self.store = store
        self.publisher = publisher
        self.worker = worker
        self.lease_s = lease_s
        self.policy = policy or RetryPolicy()
        self.output_types = graph.stage_output_types(spec, self.stage)
        self.final_ports = graph.job_output_ports(spec, self.stage.name)
        self.consumed_ports = graph.sole_consumer_inputs(spec, self.stage.name)
        # None: every value stays inline (stages that only pass text and JSON need no connector).
        self.values = values
        # What to do when a batch overruns the stage's timeout_s; default: exit so the
        # supervisor restarts the worker with a fresh engine.
        self.on_timeout = on_timeout or (lambda: os._exit(70))
        self.cancel_flags = cancel_flags or CancelFlags()
        # Live readers of the jobs (SSE, waiting routes) are nudged when a batch changes them; the
        # store stays the record. Anything with `nudge({job id: status}, ended)`; None: nobody listens.
        self.events = events

    def run_batch(self, messages: Sequence[tuple[str, int]]) -> BatchReport:
        report = BatchReport(received=len(messages))
        size = self.stage.batch.max_size
        for start in range(0, len(messages), size):
            self._run_chunk(messages[start : start + size], report)
        return report

    def _run_chunk(self, messages: Sequence[tuple[str, int]], report: BatchReport) -> None:
        batch_id = uuid.uuid4().hex[:16]
        try:
            claimed, side = self.store.claim_batch(messages, self.worker, batch_id, self.lease_s)
        except Exception as exc:
            raise StoreUnavailable(f"claim failed: {type(exc).__name__}: {exc}") from exc
        # Stages fed by a stream from these runs start now, beside them.
        publish_committed(self.store, self.publisher, side)
        if not claimed:
            return
        report.claimed += len(claimed)
        report.batch_sizes.append(len(claimed))
        self.nudge({str(c.job_id): "running" for c in claimed})
        self.cancel_flags.set(set())
        started = time.monotonic()
        with _Heartbeat(self, [c.id for c in claimed]):
            loaded, results = self.load_inputs(claimed)
            requests = [StageRequest(str(c.id), inputs, c.params, str(c.job_id)) for c, inputs in loaded]
            if requests:
                try:
                    ran = self.engine.run(requests)
                    if len(ran) != len(requests):
                        raise EngineDead(f"engine returned {len(ran)} results for {len(requests)} requests")
                except Exception as exc:
                    log.exception("batch %s of %s failed", batch_id, self.stage.name)
                    ran = [exc] * len(requests)
                results.update({c.id: r for (c, _), r in zip(loaded, ran, strict=True)})
        run_s = time.monotonic() - started
        log.info("batch %s: %d run(s) in %.3fs", batch_id, len(claimed), run_s)
        engine_dead = next((r for r in results.values() if isinstance(r, EngineDead)), None)
        succeeded, failed = self.record_batch(claimed, results)
        report.succeeded += succeeded
        report.failed += failed
        self.measure(claimed, results, run_s, succeeded, failed)
        if engine_dead is not None:
            raise engine_dead

    def record_batch(self, claimed: list[ClaimedRun], results: dict) -> tuple[int, int]:
        """Store outputs, record every success in one transaction, publish what became ready at once."""
        done, failures = [], []
        for run in claimed:
            result = results[run.id]
            if isinstance(result, BaseException):
                failures.append((run, result))
                continue
            try:
                done.append((run, self._store_outputs(run, result)))
            except Exception as exc:  # one row's bad output must not strand the others
                log.exception("could not store the outputs of run %s", run.id)
                # An output of the wrong type stays fatal; a store or connector hiccup is worth a retry.
                failures.append((run, exc if isinstance(exc, StageError) else RetryableStageError(
                    f"could not record the result: {type(exc).__name__}: {exc}")))
        try:
            record = self.store.complete_many(done)
        except Exception as exc:
            log.exception("could not record batch results")
            record = BatchRecord()
            error = RetryableStageError(f"could not record the result: {type(exc).__name__}: {exc}")
            for run, outputs in done:
                self._delete(refs_in(outputs))
                failures.append((run, error))
            done = []
        publish_committed(self.store, self.publisher, record.tasks)
        unsettled = set()
        for run, outputs in done:
            if run.id not in record.recorded:
                # Canceled or lease lost meanwhile: this result was not recorded, so nothing points at it.
                self._delete(refs_in(outputs))
                unsettled.add(run.job_id)
            elif run.job_id not in record.finished:
                # Shared memory is scarce: free an input as soon as its only reader has succeeded.
                self._delete([v for port, v in run.inputs.items() if port in self.consumed_ports and is_ref(v)
                              and v["artifact"].startswith("shm:")])
        for run, error in failures:
            try:
                self._record_failure(run, error)
            except Exception:  # the database is gone: the lease runs out and the reconciler retries it
                log.exception("could not record the failure of run %s", run.id)
            unsettled.add(run.job_id)
        self._free_finished(record.finished)
        self._clean_finished_jobs(unsettled)
        ended = {str(j) for j in record.finished}
        self.nudge({str(run.job_id): "ended" if str(run.job_id) in ended else "changed" for run in claimed}, ended)
        return len(record.recorded), len(claimed) - len(record.recorded)

    def measure(self, claimed: list[ClaimedRun], results: dict, run_s: float, succeeded: int, failed: int) -> None:
        """The batch in the Prometheus counters (a worker's own; shared by a host's processes)."""
        tokens = steps = 0
        for run in claimed:
            result = results.get(run.id)
            if isinstance(result, dict):
                usage = result.get("usage")
                tokens += int(usage.get("completion_tokens") or 0) if isinstance(usage, dict) else 0
                steps += int(run.params.get("num_inference_steps") or 0)
        metrics.record_batch(f"{self.spec.name}.{self.stage.name}", batch_size=len(claimed), run_s=run_s,
                             queue_waits_s=[r.queued_s for r in claimed if r.queued_s is not None],
                             succeeded=succeeded, failed=failed, tokens=tokens, steps=steps)

    def nudge(self, changes: dict[str, str], ended: set[str] | None = None) -> None:
        if self.events is not None:
            try:
                self.events.nudge(changes, ended or set())
            except Exception:  # a live view only; never the batch's problem
                log.exception("could not nudge the readers of %d job(s)", len(changes))

    def _store_outputs(self, run: ClaimedRun, result: dict) -> dict:
        if self.values is None:
            return {k: v for k, v in result.items() if k in self.output_types}
        return self.values.store(str(run.job_id), self.stage.name, result, self.output_types, self.final_ports)

    def _delete(self, refs: list[dict]) -> None:
        if self.values is not None and refs:
            try:
                self.values.delete(refs)
            except Exception:  # cleanup never fails the batch; retention sweeps what is left
                log.exception("could not delete %d artifact(s)", len(refs))

    def _free_finished(self, finished: dict) -> None:
        """Free the intermediates of jobs this batch finished (the store returned their references)."""
        if self.values is None:
            return
        for job_id, refs in finished.items():
            self._delete(refs)
            try:
                if self.values.transit.scheme == "shm":
                    self.values.transit.delete_prefix(str(job_id))
                free_chunks(self.values.transit, str(job_id))
            except Exception:
                log.exception("could not free the transit artifacts of job %s", job_id)

    def load_inputs(self, claimed: list[ClaimedRun]) -> tuple[list[tuple[ClaimedRun, dict]], dict]:
        """Each run's inputs in engine form; a run whose inputs cannot be read fails alone."""
        loaded, failed = [], {}
        for run in claimed:
            try:
                loaded.append((run, self.values.load(run.inputs) if self.values else run.inputs))
            except Exception as exc:
                log.exception("could not load the inputs of run %s", run.id)
                failed[run.id] = exc
        return loaded, failed

    def _clean_finished_jobs(self, job_ids: set) -> None:
        """Free the intermediate artifacts of jobs that ended outside this batch's record (canceled, failed)."""
        if self.values is not None and job_ids:
            try:
                clean_finished_jobs(self.store, self.values, job_ids)
            except Exception:  # the store is unreachable: retention frees them later
                log.exception("could not clean up after %d job(s)", len(job_ids))

    def _record_failure(self, run: ClaimedRun, error: BaseException) -> None:
        decision = self.policy.decide(error, run.attempt, run.max_attempts)
        tasks = self.store.fail(run, error_record(error), decision.retry, decision.delay_s, self.worker)
        publish_committed(self.store, self.publisher, tasks)


class _Heartbeat:
    """While a batch runs: renew its leases, notice canceled jobs, and enforce timeout_s."""

    def __init__(self, runner: StageRunner, run_ids: list[uuid.UUID], interval_s: float = 1.0):
        self.runner = runner
        self.run_ids = run_ids
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-heartbeat", daemon=True)

    def __enter__(self):
        self._deadline = time.monotonic() + self.runner.stage.timeout_s
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        store, runner = self.runner.store, self.runner
        last_renew = time.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                if time.monotonic() > self._deadline:
                    self._time_out()
                    return
                runner.cancel_flags.set(store.canceled_among(self.run_ids))
                if time.monotonic() - last_renew >= runner.lease_s / 3:
                    store.renew_leases(self.run_ids, runner.lease_s)
                    last_renew = time.monotonic()
            except Exception:  # a database blip must not kill the batch; the lease has slack
                log.exception("heartbeat failed")

    def _time_out(self) -> None:
        runner = self.runner
        log.error("batch of %s exceeded timeout_s=%s; failing its runs and restarting",
                  runner.stage.name, runner.stage.timeout_s)
        error = RetryableStageError(f"stage exceeded its timeout of {runner.stage.timeout_s}s")
        for run in runner.store.running_claims(self.run_ids):
            runner._record_failure(run, error)
        runner.on_timeout()
