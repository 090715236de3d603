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
