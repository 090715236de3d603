"""Handing ready stage runs to the queues, after their state is committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from omnijobs.messages import StageTask

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Puts stage task messages on their queues. The broker-specific part lives outside the core."""

    def publish(self, tasks: Sequence[StageTask]) -> None: ...


def dispatch(store, publisher: Publisher, tasks: Sequence[StageTask]) -> bool:
    """Publish committed tasks and note when. Returns False if the broker refused.

    NOTE: the state change is committed before the publish, never after: if the publish fails or
    the process dies in between, the run stays `queued` with no `enqueued_at` and the reconciler
    publishes it later. A run is never marked running without being in the database first.
    """
    if not tasks:
        return True
    try:
        publisher.publish(tasks)
    except Exception as exc:  # broker down: the reconciler will publish these
        log.warning("could not publish %d task(s), the reconciler will retry: %s", len(tasks), exc)
        return False
    store.mark_enqueued(tasks)
    return True


def publish_committed(store, publisher: Publisher, tasks: Sequence[StageTask]) -> bool:
    """Publish tasks whose runs were marked published in the transaction that made them ready.

    The hot path's variant of `dispatch`: no second transaction when the publish succeeds. When it
    fails the mark is cleared, so the reconciler republishes them as soon as it next sweeps. Never
    raises: the state change it follows is already committed, and nothing after a commit may turn
    recorded work (or an accepted job) into an error.
    """
    if not tasks:
        return True
    try:
        publisher.publish(tasks)
        return True
    except Exception as exc:  # broker down: the reconciler will publish these
        log.warning("could not publish %d task(s), the reconciler will retry: %s", len(tasks), exc)
    try:
        store.mark_unpublished(tasks)
    except Exception as exc:  # the database is down too: they go after the stale-message age
        log.warning("could not clear the publish mark of %d task(s): %s", len(tasks), exc)
    return False
