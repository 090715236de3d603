"""Handing due deliveries to the webhook queue (first sends, scheduled retries, lost messages)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from omnijobs.store.webhooks import WebhookStore

log = logging.getLogger(__name__)

WEBHOOK_TASK = "omnijobs.deliver_webhook"
WEBHOOK_QUEUE = "omni.webhooks"


@dataclass(frozen=True)
class DeliveryTask:
    """The webhook queue's only message: which delivery, and how many attempts the sender expects made."""

    delivery_id: str
    attempts: int

    def args(self) -> list:
        return [self.delivery_id, self.attempts]


class DeliveryPublisher(Protocol):
    def publish_deliveries(self, tasks: Sequence[DeliveryTask]) -> None: ...


def relay(store: WebhookStore, publisher: DeliveryPublisher, stale_after_s: float) -> int:
    """Publish every due delivery once; returns how many. Safe to run from several processes:
    a row is marked before it is published, and a duplicate message claims nothing."""
    due = store.take_due(stale_after_s, datetime.now(UTC))
    if not due:
        return 0
    try:
        publisher.publish_deliveries([DeliveryTask(str(i), n) for i, n in due])
    except Exception as exc:  # noqa: BLE001 - broker down: leave them for the next pass
        log.warning("could not publish %d webhook deliveries: %s", len(due), exc)
        store.unmark_enqueued([i for i, _ in due])
        return 0
    return len(due)


def redeliver(store: WebhookStore, publisher: DeliveryPublisher, job_id: str, delivery_id: str,
              owner: str | None = None):
    """Send one event again now, keeping its webhook-id; returns the delivery."""
    delivery, attempts = store.redeliver(job_id, delivery_id, owner)
    try:
        publisher.publish_deliveries([DeliveryTask(str(delivery.id), attempts)])
    except Exception as exc:  # noqa: BLE001 - broker down: the next relay pass sends it
        log.warning("could not publish redelivery %s: %s", delivery.id, exc)
        store.unmark_enqueued([delivery.id])
    return delivery
