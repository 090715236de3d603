"""The reconciler: the sweep that makes "every accepted job ends" true when messages are lost.

NOTE: the database is the source of truth and the queue only a hint. Every state change is
committed before its message is published (dispatch.py), so a message can be missing for three
reasons: the publisher died after the commit, the broker lost it (Redis restarted or flushed), or
the worker holding it died. The sweep covers all three from the database alone: runs `running`
past their lease go back to `queued` (or fail after max_attempts), and runs `queued` with no
publish for `requeue_after_s` are published again. Republishing is safe because a claim is a
conditional update on (id, status, attempt): a duplicate message finds nothing to claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omnijobs.dispatch import Publisher, dispatch
from omnijobs.store.jobs import JobStore

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    expired: int = 0
    republished: int = 0


def sweep(store: JobStore, publisher: Publisher, requeue_after_s: float) -> SweepReport:
    report = SweepReport()
    for run_id, job_id in store.expired_leases():
        tasks = store.release_expired(run_id, job_id)
        report.expired += 1
        dispatch(store, publisher, tasks)
    stale = store.stale_queued(requeue_after_s)
    if stale and dispatch(store, publisher, stale):
        report.republished = len(stale)
    if report.expired or report.republished:
        log.warning("reconciler: %d expired lease(s), %d run(s) republished", report.expired, report.republished)
    return report


def run_forever(store: JobStore, publisher: Publisher, interval_s: float, requeue_after_s: float,
                chores: Sequence[Callable[[], object]] = ()) -> None:
    """Sweep every `interval_s`; `chores` (webhook relay, retention) run after each sweep, each on its own."""
    while True:
        try:
            sweep(store, publisher, requeue_after_s)
        except Exception:
            log.exception("reconciler sweep failed; trying again")
        for chore in chores:
            try:
                chore()
            except Exception:
                log.exception("reconciler chore %s failed; trying again", getattr(chore, "__name__", chore))
        time.sleep(interval_s)
