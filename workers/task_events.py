"""Celery task events for stage runs, so Flower (and `celery events`) count them.

The stage worker consumes its queue with a plain kombu consumer, not a Celery worker, so nothing
sends Celery's events by itself. The consumer calls these around each batch with the messages it
took: `received` when a message is taken, `started` when its batch starts, then `succeeded` or
`failed`; `heartbeat` on the worker's heartbeat (Flower shows the worker online while they come).

Events are a courtesy to the operator: a failure to send one is logged, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from celery import Celery

log = logging.getLogger(__name__)


def task_id(message) -> str | None:
    """The Celery task id a stage message carries (its `id` header), the key Flower tracks a task by."""
    return (getattr(message, "headers", None) or {}).get("id")


class TaskEvents:
    def __init__(self, app: Celery, hostname: str, enabled: bool = True):
        self.hostname = hostname
        self.enabled = enabled and app.conf.worker_send_task_events
        self._lock = threading.Lock()  # one dispatcher for every stage loop of the process
        self._dispatcher = app.events.Dispatcher(app.connection_for_write(), hostname=hostname,
                                                 enabled=self.enabled) if self.enabled else None
        self._started: dict[str, float] = {}

    def _send(self, kind: str, **fields) -> None:
        if self._dispatcher is None:
            return
        try:
            with self._lock:
                self._dispatcher.send(kind, **fields)
        except Exception as exc:
            log.warning("could not send %s event: %s", kind, exc)

    def received(self, task_ids: Iterable[str], name: str, queue: str, args: Iterable = ()) -> None:
        args = list(args)
        for i, tid in enumerate(task_ids):
            self._send("task-received", uuid=tid, name=name, args=repr(args[i]) if i < len(args) else "()",
                       kwargs="{}", retries=0, eta=None, routing_key=queue, queue=queue, root_id=tid, parent_id=None)

    def started(self, task_ids: Iterable[str]) -> None:
        now = time.monotonic()
        for tid in task_ids:
            self._started[tid] = now
            self._send("task-started", uuid=tid)

    def succeeded(self, task_ids: Iterable[str], result: str = "recorded") -> None:
        for tid in task_ids:
            self._send("task-succeeded", uuid=tid, result=result, runtime=self._runtime(tid))

    def failed(self, task_ids: Iterable[str], exception: str) -> None:
        for tid in task_ids:
            self._send("task-failed", uuid=tid, exception=exception, traceback="", runtime=self._runtime(tid))

    def heartbeat(self, active: int = 0, processed: int = 0) -> None:
        self._send("worker-heartbeat", freq=5.0, active=active, processed=processed, sw_ident="omnijobs",
                   sw_ver="1", sw_sys="")

    def online(self) -> None:
        self._send("worker-online", freq=5.0, sw_ident="omnijobs", sw_ver="1", sw_sys="")

    def offline(self) -> None:
        self._send("worker-offline", sw_ident="omnijobs", sw_ver="1", sw_sys="")

    def close(self) -> None:
        if self._dispatcher is not None:
            with self._lock:
                self._dispatcher.close()
                self._dispatcher.connection.release()

    def _runtime(self, tid: str) -> float:
        started = self._started.pop(tid, None)
        return round(time.monotonic() - started, 6) if started is not None else 0.0
