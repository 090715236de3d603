"""Continuous batching: a stage loop that keeps up to `max_num_seqs` requests inside the engine.

The batch loop (workers/consumer.py) waits for a whole batch to finish before it takes the next.
Here the engine (vLLM) is stepped token by token, and every step the loop looks at the queue:
new messages are claimed and added as slots free up, and each request that ends is recorded and
its message acknowledged at once, while the others keep running.

Claims, leases, cancellation and recording are the runner's (StageRunner), as for batch engines:
- a message is acknowledged only when its run is recorded (or was not ours to run: a duplicate or
  stale delivery claims nothing), so a worker killed mid-generation leaves its messages and leases
  for the broker and the reconciler to hand to the next worker;
- canceled runs are aborted in the engine between steps;
- a run past the stage's `timeout_s` is aborted and failed as retryable;
- leases of the runs in the engine are renewed while they run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from omnijobs.dispatch import publish_committed
from omnijobs.engines.base import StageRequest
from omnijobs.errors import EngineDead, RetryableStageError
from workers.consumer import Delivery, _close_quietly, _parse

log = logging.getLogger(__name__)

# While requests run, the queue is looked at without waiting (a wait of 1 ms here, at every step,
# made the Qwen2.5-Omni talker's ~3 ms steps 1.3× slower in wall time), and at most every
# BUSY_POLL_EVERY_S: each look costs the broker client's bookkeeping (every 10th a Redis scan for
# unacknowledged messages to restore), and a job admitted a few ms later loses nothing its claim
# does not cost anyway.
BUSY_POLL_S = 0.0
BUSY_POLL_EVERY_S = 0.005
IDLE_POLL_S = 1.0
# How often the database is asked about cancellations while requests run.
CANCEL_CHECK_S = 0.5


@dataclass
class _InFlight:
    claim: object  # ClaimedRun
    delivery: Delivery
    deadline: float


class ContinuousLoop:
    """Same shape as the batch worker's stage loop (run / close), for engines with add/step/abort."""

    def __init__(self, app, ref, queue, stage, runner, workers, worker_name, beat, stop, polled: bool = False):
        self.app, self.ref, self.queue_name, self.stage = app, ref, queue, stage
        self.runner, self.workers, self.worker_name, self.beat, self.stop = runner, workers, worker_name, beat, stop
        self.engine = runner.engine
        self.slots = max(1, int(getattr(self.engine, "max_seqs", stage.batch.max_size)))
        self.idle_poll_s = 0.05 if polled else IDLE_POLL_S
        self.inflight: dict[str, _InFlight] = {}
        self._waiting: list[tuple[object, object]] = []
        self._last_cancel_check = 0.0
        self._last_renew = time.monotonic()
        self._last_poll = 0.0

    def run(self) -> None:
        announced = False
        while not (self.stop.is_set() and not self.inflight):
            conn = self.app.connection_for_read()
            try:
                conn.ensure_connection(max_retries=None, interval_start=0.2, interval_step=0.5, interval_max=2.0)
                queue = self.app.amqp.queues[self.queue_name]
                # Unacknowledged messages are the requests in the engine: the broker hands out no more
                # than there are slots.
                with conn.Consumer([queue], callbacks=[self._on_message], accept=["json"],
                                   prefetch_count=self.slots):
                    if not announced:
                        log.info("worker %s ready.", self.worker_name)
                        announced = True
                    self._loop(conn)
                return
            except (*conn.connection_errors, *conn.channel_errors, OSError) as exc:
                log.warning("broker connection to %s lost (%s); reconnecting", self.queue_name, exc)
                # Messages not yet admitted come back from the broker; those in flight are acknowledged
                # on a dead channel in vain and redelivered, and their re-claim finds them recorded.
                self._waiting.clear()
                self.stop.wait(0.5)
            finally:
                _close_quietly(conn)

    def _on_message(self, body, message) -> None:
        self._waiting.append((body, message))

    def _loop(self, conn) -> None:
        while not (self.stop.is_set() and not self.inflight):
            busy = bool(self.inflight)
            now = time.monotonic()
            if (not self.stop.is_set() and len(self.inflight) < self.slots
                    and (not busy or now - self._last_poll >= BUSY_POLL_EVERY_S)):
                self._last_poll = now
                try:
                    conn.drain_events(timeout=BUSY_POLL_S if busy else self.idle_poll_s)
                    while len(self._waiting) + len(self.inflight) < self.slots:
                        conn.drain_events(timeout=BUSY_POLL_S)
                except socket.timeout:
                    pass
                self._admit()
            if self.inflight:
                self._tend()
                self._record(self._step())
            elif self.stop.is_set():
                return

    # ------------------------------------------------------------------ admission

    def _admit(self) -> None:
        """Claim what waits (up to the free slots) and add it to the engine."""
        free = self.slots - len(self.inflight)
        batch, self._waiting = self._waiting[:free], self._waiting[free:]
        by_id: dict[str, Delivery] = {}
        for body, message in batch:
            parsed = _parse(body, message)
            if parsed is None:
                log.error("dropping a message that is not a stage task: %r", message.headers)
                message.ack()
            elif parsed[0] in by_id or parsed[0] in self.inflight:
                message.ack()  # the same run delivered twice: one delivery is enough
            else:
                by_id[parsed[0]] = Delivery(*parsed, message)
        deliveries = list(by_id.values())
        if not deliveries:
            return
        runner = self.runner
        try:
            claimed, side = runner.store.claim_batch([(d.run_id, d.attempt) for d in deliveries], self.worker_name,
                                                     uuid.uuid4().hex[:16], runner.lease_s)
        except Exception:
            log.exception("could not claim %d run(s) of %s; requeued", len(deliveries), self.queue_name)
            for d in deliveries:
                d.message.requeue()
            self.stop.wait(0.5)
            return
        # Stages fed by a stream from these runs start now, beside them (as the batch loop does).
        publish_committed(runner.store, runner.publisher, side)
        ours = {str(c.id) for c in claimed}
        for d in deliveries:  # duplicates and stale deliveries: nothing to run, nothing to keep
            if d.run_id not in ours:
                d.message.ack()
        if not claimed:
            return
        loaded, failed = runner.load_inputs(claimed)
        deadline = time.monotonic() + self.stage.timeout_s
        for claim in claimed:
            self.inflight[str(claim.id)] = _InFlight(claim, by_id[str(claim.id)], deadline)
        ended = [(str(c.id), failed[c.id]) for c in claimed if c.id in failed]
        for claim, inputs in loaded:
            req = StageRequest(str(claim.id), inputs, claim.params, str(claim.job_id))
            error = self.engine.add(req)
            if error is not None:  # this row alone cannot run (prompt too long, unreadable image...)
                ended.append((req.run_id, error))
        # Only once the rows are in the engine: these two writes are not on the way to their first
        # output (measured, Qwen2.5-Omni talker under load: 5–20 ms between claim and add).
        runner.nudge({str(c.job_id): "running" for c in claimed})  # live readers see the stage start now
        self.workers.batch_started(self.worker_name, len(self.inflight))
        self._record(ended)

    # ------------------------------------------------------------------ running

    def _step(self) -> list[tuple[str, object]]:
        try:
            return [(req.run_id, result) for req, result in self.engine.step()]
        except EngineDead:
            log.exception("engine is dead; exiting so the supervisor restarts the worker")
            os._exit(75)

    def _tend(self) -> None:
        """Between steps: abort canceled and overdue runs, renew the leases of the others."""
        now = time.monotonic()
        store, ids = self.runner.store, [f.claim.id for f in self.inflight.values()]
        ended = []
        if now - self._last_cancel_check >= CANCEL_CHECK_S:
            self._last_cancel_check = now
            try:
                canceled = store.canceled_among(ids)
            except Exception:  # a database blip: ask again next time
                log.exception("could not check for canceled runs")
                canceled = set()
            aborted = self.engine.abort(canceled)
            for req, _ in aborted:
                log.info("aborted canceled run %s", req.run_id)
            ended += aborted
        overdue = [run_id for run_id, f in self.inflight.items() if now > f.deadline]
        if overdue:
            log.error("%d run(s) of %s exceeded timeout_s=%s; aborted", len(overdue), self.stage.name,
                      self.stage.timeout_s)
            self.engine.abort(overdue)
            error = RetryableStageError(f"stage exceeded its timeout of {self.stage.timeout_s}s")
            ended += [(_Req(run_id), error) for run_id in overdue]
        if now - self._last_renew >= self.runner.lease_s / 3:
            self._last_renew = now
            try:
                store.renew_leases(ids, self.runner.lease_s)
            except Exception:  # the lease has slack
                log.exception("could not renew leases")
        self._record([(req.run_id, result) for req, result in ended])

    def _record(self, ended: list[tuple[str, object]]) -> None:
        """Record the runs that ended (one transaction for all), then acknowledge their messages."""
        ended = [(run_id, result) for run_id, result in ended if run_id in self.inflight]
        if not ended:
            return
        finished = [self.inflight.pop(run_id) for run_id, _ in ended]
        claims = [f.claim for f in finished]
        results = {f.claim.id: result for f, (_, result) in zip(finished, ended, strict=True)}
        succeeded, failed = self.runner.record_batch(claims, results)
        for f in finished:
            f.delivery.message.ack()
        self.workers.batch_done(self.worker_name, succeeded, failed, len(claims))

    def close(self) -> None:
        self.beat.set()
        self.workers.stopped(self.worker_name)
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class _Req:
    run_id: str


def is_continuous(engine) -> bool:
    """Engines that take requests one by one (add / step / abort) get the continuous loop."""
    return all(callable(getattr(engine, name, None)) for name in ("add", "step", "abort"))

