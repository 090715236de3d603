"""The reconciler: the sweep that makes "every accepted job ends" true when messages are lost.

NOTE: the database is the source of truth and the queue only a hint. Every state change is
committed before its message is published (dispatch.py), so a message can be missing for three
reasons: the publisher died after the commit, the broker lost it (Redis restarted or flushed), or
the worker holding it died. The sweep covers all three from the database alone: runs `running`
past their lease go back to `queued` (or fail after max_attempts), and `queued` runs whose message
is gone are published again. Republishing is safe because a claim is a conditional update on
(id, status, attempt): a duplicate message finds nothing to claim.

Which messages are gone: a run never published (its publish failed, the broker was down) goes
again within seconds. A published run goes again only when the broker, asked through a `probe`,
holds no message for it (after `check_after_s`), or when its message has sat unacknowledged with
a consumer for `requeue_after_s` (that consumer may be dead). A message still waiting in its queue
is never doubled, however long a backlog holds it. Without a probe (a broker it cannot read),
published runs go again after `requeue_after_s`, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from omnijobs.dispatch import Publisher, dispatch
from omnijobs.store.jobs import JobStore

log = logging.getLogger(__name__)

# Seconds before a never-published run is published again: long enough for a publish in flight to land.
UNPUBLISHED_AFTER_S = 2.0
# Seconds after its publish before the broker is asked whether a run's message is still there.
CHECK_AFTER_S = 10.0


class QueueProbe(Protocol):
    def held(self, queues: set[str]) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """(waiting, unacknowledged): (run id, attempt) of the messages the broker holds in `queues`."""


@dataclass
class SweepReport:
    expired: int = 0
    republished: int = 0


def sweep(store: JobStore, publisher: Publisher, requeue_after_s: float, probe: QueueProbe | None = None,
          unpublished_after_s: float = UNPUBLISHED_AFTER_S, check_after_s: float = CHECK_AFTER_S) -> SweepReport:
    report = SweepReport()
    for run_id, job_id in store.expired_leases():
        tasks = store.release_expired(run_id, job_id)
        report.expired += 1
        dispatch(store, publisher, tasks)
    stale = store.stale_queued(requeue_after_s, published=False,
                               unpublished_after_s=min(unpublished_after_s, requeue_after_s))
    stale += _lost(store, probe, requeue_after_s, min(check_after_s, requeue_after_s))
    if stale and dispatch(store, publisher, stale):
        report.republished = len(stale)
    if report.expired or report.republished:
        log.warning("reconciler: %d expired lease(s), %d run(s) republished", report.expired, report.republished)
    return report


def _lost(store: JobStore, probe: QueueProbe | None, requeue_after_s: float, check_after_s: float) -> list:
    """Published queued runs whose message is gone (or, without a probe, old enough to assume so)."""
    if probe is None:
        return store.stale_queued(requeue_after_s, published=True)
    candidates = store.stale_queued(check_after_s, published=True)
    if not candidates:
        return []
    try:
        waiting, unacked = probe.held({t.queue for t in candidates})
    except Exception as exc:  # the broker is down: nothing can be published anyway
        log.warning("reconciler: cannot read the broker's queues (%s); republishing nothing this sweep", exc)
        return []
    old = {t.run_id for t in store.stale_queued(requeue_after_s, published=True)} if unacked else set()
    return [t for t in candidates if (t.run_id, t.attempt) not in waiting
            and ((t.run_id, t.attempt) not in unacked or t.run_id in old)]


def run_forever(store: JobStore, publisher: Publisher, interval_s: float, requeue_after_s: float,
                chores: Sequence[Callable[[], object]] = (), probe: QueueProbe | None = None) -> None:
    """Sweep every `interval_s`; `chores` (webhook relay, retention) run after each sweep, each on its own."""
    while True:
        try:
            sweep(store, publisher, requeue_after_s, probe)
        except Exception:
            log.exception("reconciler sweep failed; trying again")
        for chore in chores:
            try:
                chore()
            except Exception:
                log.exception("reconciler chore %s failed; trying again", getattr(chore, "__name__", chore))
        time.sleep(interval_s)
