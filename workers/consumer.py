"""Pulling one stage queue in batches, straight from the broker.

A batch is what is waiting when the stage is free, up to `max_size`: the consumer blocks for the
first message, then takes the messages already there and runs as soon as none is left. It
lingers for more only while they keep arriving, and never past `max_wait_ms` — so a lone job
pays no batching wait, and a burst still fills whole batches.

NOTE: messages are acknowledged after their batch was handled (recorded in the store). A batch
whose claim failed (the database is unreachable) is put back on the queue, not acknowledged, so
its runs go on as soon as the database is back instead of after the reconciler's republish age.
The loop owns its connection: when the broker goes away it reconnects and carries on, with
nothing (no timer) to re-arm.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from celery import Celery

from omnijobs.messages import STAGE_TASK

log = logging.getLogger(__name__)

# How long to wait for "one more message" before deciding the queue is empty. A message already
# in the broker arrives well within this on a local network.
DRAIN_POLL_S = 0.002
# How long to wait for a message the broker said is waiting (a loaded host may take a while).
WAITING_POLL_S = 0.05


@dataclass(frozen=True)
class Delivery:
    run_id: str
    attempt: int
    message: object  # the kombu message, acknowledged or requeued by the consumer


class ClaimUnavailable(Exception):
    """The handler could not take the batch at all (store unreachable): requeue, back off."""


class BatchConsumer:
    def __init__(self, app: Celery, queue: str, max_size: int, max_wait_ms: float,
                 handle: Callable[[list[Delivery]], None], stop: threading.Event, *,
                 idle_poll_backoff: bool = False, on_ready: Callable[[], None] | None = None,
                 on_idle: Callable[[], None] | None = None, task_events=None):
        self.app = app
        self.queue_name = queue
        self.max_size = max(1, max_size)
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.handle = handle
        self.stop = stop
        # Brokers that are polled (the file-system one) poll less and less while idle.
        self.idle_poll_backoff = idle_poll_backoff
        self.on_ready = on_ready
        self.on_idle = on_idle or (lambda: None)
        # workers.task_events.TaskEvents, or None: what Flower sees of each batch.
        self.task_events = task_events
        self._buffer: list = []
        # Messages held until their ETA (retry backoff): (due, seq, body, message), unacknowledged.
        self._delayed: list = []
        self._seq = itertools.count()
        self._consumer = None
        self._requeue_backoff_s = 0.0

    def run(self) -> None:
        """Consume until `stop` is set, reconnecting whenever the broker connection is lost."""
        announced = False
        while not self.stop.is_set():
            conn = self.app.connection_for_read()
            try:
                conn.ensure_connection(max_retries=None, interval_start=0.2, interval_step=0.5, interval_max=2.0,
                                       callback=lambda: self.stop.is_set() and _raise_stop())
                queue = self.app.amqp.queues[self.queue_name]
                with conn.Consumer([queue], callbacks=[self._on_message], accept=["json"],
                                   prefetch_count=self.max_size) as consumer:
                    self._consumer = consumer
                    if not announced and self.on_ready:
                        self.on_ready()
                        announced = True
                    self._consume(conn)
            except _Stop:
                return
            except (*conn.connection_errors, *conn.channel_errors, OSError) as exc:
                log.warning("broker connection to %s lost (%s); reconnecting", self.queue_name, exc)
                self._buffer.clear()  # unacknowledged: the broker gives them back
                self._delayed.clear()
                self.stop.wait(0.5)
            finally:
                _close_quietly(conn)

    def _on_message(self, body, message) -> None:
        due = _eta(message)
        if due is not None and due > time.time():
            heapq.heappush(self._delayed, (due, next(self._seq), body, message))
            self._set_prefetch()
            return
        self._buffer.append((body, message))

    def _set_prefetch(self) -> None:
        # Held messages must not use up the slots that bring in work that is due now.
        if self._consumer is not None:
            self._consumer.qos(prefetch_count=self.max_size + len(self._delayed))

    def _release_due(self) -> float:
        """Move held messages whose time has come to the batch; seconds until the next one is due."""
        released = False
        while self._delayed and self._delayed[0][0] <= time.time():
            _, _, body, message = heapq.heappop(self._delayed)
            self._buffer.append((body, message))
            released = True
        if released:
            self._set_prefetch()
        return self._delayed[0][0] - time.time() if self._delayed else float("inf")

    def _consume(self, conn) -> None:
        idle_s = 0.0
        while not self.stop.is_set():
            next_due_s = self._release_due()
            if not self._buffer:
                block_s = 0.05 if self.idle_poll_backoff else 1.0
                try:
                    conn.drain_events(timeout=max(0.001, min(block_s, next_due_s)))
                except socket.timeout:
                    self.on_idle()
                    if self.idle_poll_backoff and not self._delayed:
                        idle_s = min(max(idle_s * 2, 0.05), 0.5)
                        self.stop.wait(idle_s)
                    continue
                if not self._buffer:  # only held messages arrived
                    continue
            idle_s = 0.0
            self._fill(conn)
            batch, self._buffer = self._buffer[: self.max_size], self._buffer[self.max_size:]
            self._run(batch)

    def _fill(self, conn) -> None:
        """Take what is already waiting, then linger for arrivals: stop at the first empty poll, a
        full batch or max_wait."""
        # NOTE: the broker says how many wait, so a loaded machine (a poll that misses its few
        # milliseconds) does not cut a batch short of the messages that are already there.
        target = min(self.max_size, len(self._buffer) + self._waiting(conn))
        while len(self._buffer) < target:
            try:
                conn.drain_events(timeout=WAITING_POLL_S)
            except socket.timeout:
                break  # another consumer took them
        deadline = time.monotonic() + self.max_wait_s
        while len(self._buffer) < self.max_size and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=DRAIN_POLL_S)
            except socket.timeout:
                return

    def _waiting(self, conn) -> int:
        """Messages still in the broker's queue (0 when the transport cannot say)."""
        try:
            queue = self.app.amqp.queues[self.queue_name].bind(conn.default_channel)
            return int(queue.queue_declare(passive=True).message_count or 0)
        except Exception:  # NOTE: only a hint for batch size; the polls below still take what comes
            log.debug("could not read the depth of %s", self.queue_name, exc_info=True)
            return 0

    def _run(self, batch: list) -> None:
        deliveries, poison = [], []
        for body, message in batch:
            parsed = _parse(body, message)
            (deliveries if parsed else poison).append(Delivery(*parsed, message) if parsed else message)
        for message in poison:
            log.error("dropping a message that is not a stage task: %r", message.headers)
            message.ack()
        if not deliveries:
            return
        ids = self._announce(deliveries)
        try:
            self.handle(deliveries)
        except ClaimUnavailable as exc:
            if ids:
                self.task_events.failed(ids, repr(exc))
            self._requeue_backoff_s = min(max(self._requeue_backoff_s * 2, 0.5), 10.0)
            log.warning("could not claim a batch of %s (%s); requeued, retrying in %.1fs",
                        self.queue_name, exc, self._requeue_backoff_s)
            for d in deliveries:
                d.message.requeue()
            self.stop.wait(self._requeue_backoff_s)
            return
        except Exception:  # the handler owns its failures; the consumer must keep consuming
            log.exception("handling a batch of %s failed", self.queue_name)
        self._requeue_backoff_s = 0.0
        for d in deliveries:
            d.message.ack()
        if ids:
            # "Succeeded" for the message: its run's own outcome is in the store.
            self.task_events.succeeded(ids)

    def _announce(self, deliveries: list[Delivery]) -> list[str]:
        if self.task_events is None:
            return []
        from workers.task_events import task_id

        ids = [tid for tid in (task_id(d.message) for d in deliveries) if tid]
        self.task_events.received(ids, STAGE_TASK, self.queue_name, [[d.run_id, d.attempt] for d in deliveries])
        self.task_events.started(ids)
        return ids


def _eta(message) -> float | None:
    """The message's not-before time (epoch seconds), if it carries one."""
    eta = (message.headers or {}).get("eta")
    if not eta:
        return None
    try:
        at = datetime.fromisoformat(eta)
    except (TypeError, ValueError):
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _parse(body, message) -> tuple[str, int] | None:
    """(run id, attempt) of a stage task message (Celery's message protocol, version 2)."""
    try:
        if message.headers.get("task") != STAGE_TASK:
            return None
        args = body[0]
        return str(args[0]), int(args[1])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


class _Stop(Exception):
    pass


def _raise_stop():
    raise _Stop()


def _close_quietly(conn) -> None:
    try:
        conn.release()
    except Exception:  # closing a dead connection may fail; nothing is left to save
        log.debug("closing the broker connection failed", exc_info=True)
