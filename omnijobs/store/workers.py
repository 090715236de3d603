"""The stage worker registry: each worker registers, heartbeats, and counts its batches.

A worker whose heartbeat is older than a threshold is dead (killed, host gone); one that
shut down cleanly says so with `stopped_at`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, or_, select, update

from omnijobs.store.db import make_sessions
from omnijobs.store.tables import Worker

log = logging.getLogger(__name__)

FORGET_AFTER_S = 7 * 86400


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    host: str
    pid: int
    stage: str
    queue: str
    device: str
    engine: str
    model: str | None


@dataclass(frozen=True)
class WorkerView:
    name: str
    host: str
    pid: int
    stage: str
    queue: str
    device: str
    engine: str
    model: str | None
    started_at: datetime
    last_heartbeat: datetime
    stopped_at: datetime | None
    batch_size: int
    batches: int
    jobs_done: int
    failures: int
    state: str  # alive | dead | stopped

    @property
    def alive(self) -> bool:
        return self.state == "alive"


def _now() -> datetime:
    return datetime.now(UTC)


class WorkerRegistry:
    def __init__(self, engine: Engine):
        self._sessions = make_sessions(engine)

    def register(self, info: WorkerInfo) -> None:
        now = _now()
        with self._sessions.begin() as s:
            # A name is reused only by the same host and pid; long-gone workers are forgotten here.
            s.execute(delete(Worker).where(or_(Worker.name == info.name,
                                                Worker.last_heartbeat < now - timedelta(seconds=FORGET_AFTER_S))))
            s.add(Worker(name=info.name, host=info.host, pid=info.pid, stage=info.stage, queue=info.queue,
                         device=info.device, engine=info.engine, model=info.model, started_at=now,
                         last_heartbeat=now, stopped_at=None, batch_size=0, batches=0, jobs_done=0, failures=0))

    def heartbeat(self, name: str) -> None:
        self._set(name, last_heartbeat=_now())

    # NOTE: the batch counters are for operators; a failure to write them is logged, never raised
    # into the batch, whose durability lives in stage_runs.

    def batch_started(self, name: str, size: int) -> None:
        self._quietly(self._set, name, batch_size=size, last_heartbeat=_now())

    def batch_done(self, name: str, succeeded: int, failed: int, size: int | None = None) -> None:
        """Count a finished batch; `batch_size` keeps the size of the last batch."""
        sized = {} if size is None else {"batch_size": size}
        self._quietly(self._set, name, batches=Worker.batches + 1, jobs_done=Worker.jobs_done + succeeded,
                      failures=Worker.failures + failed, last_heartbeat=_now(), **sized)

    def stopped(self, name: str) -> None:
        self._quietly(self._set, name, stopped_at=_now(), batch_size=0)

    def list(self, dead_after_s: float, forget_after_s: float = 24 * 3600) -> list[WorkerView]:
        """Workers seen within `forget_after_s`, each marked alive, dead or stopped."""
        now = _now()
        with self._sessions() as s:
            rows = s.scalars(
                select(Worker).where(Worker.last_heartbeat > now - timedelta(seconds=forget_after_s))
                .order_by(Worker.stage, Worker.started_at)
            ).all()
        return [_view(r, now, dead_after_s) for r in rows]

    def start_heartbeat(self, name: str, interval_s: float) -> threading.Event:
        """Heartbeat from a daemon thread, busy or idle; set the returned event to stop it."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.heartbeat(name)
                except Exception:  # a database blip must not kill the worker; the next beat retries
                    log.warning("worker heartbeat failed", exc_info=True)

        threading.Thread(target=loop, name="worker-heartbeat", daemon=True).start()
        return stop

    @staticmethod
    def _quietly(fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.warning("could not update the worker registry", exc_info=True)

    def _set(self, name: str, **values) -> None:
        with self._sessions.begin() as s:
            s.execute(update(Worker).where(Worker.name == name).values(**values))


def _view(r: Worker, now: datetime, dead_after_s: float) -> WorkerView:
    if r.stopped_at is not None:
        state = "stopped"
    elif (now - r.last_heartbeat).total_seconds() > dead_after_s:
        state = "dead"
    else:
        state = "alive"
    return WorkerView(r.name, r.host, r.pid, r.stage, r.queue, r.device, r.engine, r.model, r.started_at,
                      r.last_heartbeat, r.stopped_at, r.batch_size, r.batches, r.jobs_done, r.failures, state)
