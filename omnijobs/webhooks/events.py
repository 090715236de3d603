"""Webhook event types, the per-job filter, and the payload a receiver gets."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from omnijobs.errors import InvalidInput
from omnijobs.netguard import check_url

SUCCEEDED, FAILED, CANCELED = "job.succeeded", "job.failed", "job.canceled"
STARTED, STAGE_COMPLETED = "job.started", "job.stage_completed"

COMPLETION = (SUCCEEDED, FAILED, CANCELED)
ALL = (*COMPLETION, STARTED, STAGE_COMPLETED)
# What a job gets when it names a webhook but no filter.
DEFAULT_FILTER = list(COMPLETION)


def final_event(status: str) -> str:
    return f"job.{status}"


def validate_filter(value: Any) -> list[str]:
    if value is None:
        return list(DEFAULT_FILTER)
    field = "webhook_events_filter"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidInput("must be a non-empty list of event types", field=field)
    unknown = [v for v in value if v not in ALL]
    if unknown:
        raise InvalidInput(f"unknown event type '{unknown[0]}' (known: {', '.join(ALL)})", field=field)
    return sorted(set(value), key=ALL.index)


def validate_webhook(url: Any, events: Any, allowed_hosts: frozenset[str]) -> tuple[str | None, list[str] | None]:
    """(url, event types) to store with the job, or (None, None) without a webhook."""
    if url is None:
        if events is not None:
            raise InvalidInput("webhook_events_filter needs a webhook URL", field="webhook_events_filter")
        return None, None
    if not isinstance(url, str) or not url:
        raise InvalidInput("webhook must be an http(s) URL", field="webhook")
    if len(url) > 2048:
        raise InvalidInput("webhook URL is longer than 2048 characters", field="webhook")
    try:
        checked = check_url(url, field="webhook", allowed_hosts=allowed_hosts)
    except ValueError as exc:  # urllib's own complaints: a bad IPv6 literal, a port out of range
        raise InvalidInput(f"webhook is not a valid URL: {exc}", field="webhook") from exc
    return checked, validate_filter(events)


def message_id(delivery_id: uuid.UUID | str) -> str:
    """The `webhook-id` header: fixed per event, so a receiver can drop repeats."""
    return f"msg_{uuid.UUID(str(delivery_id)).hex}"


def payload(event: str, occurred_at: datetime, job: dict, stage: str | None = None) -> str:
    body: dict[str, Any] = {"type": event, "timestamp": occurred_at.isoformat().replace("+00:00", "Z"), "data": job}
    if stage is not None:
        body["stage"] = stage
    return json.dumps(body, separators=(",", ":"), default=str)
