"""Deciding what a delivery attempt's answer means: delivered, retry later, or give up."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

DELIVERED, PENDING, FAILED, STOPPED = "delivered", "pending", "failed", "stopped"

# Seconds before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, then give up (~17.6 h in all).
DEFAULT_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)


@dataclass(frozen=True)
class Decision:
    status: str
    delay_s: float | None = None  # set when status is PENDING


@dataclass(frozen=True)
class DeliveryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    # Each delay is stretched by up to this fraction, so receivers coming back up are not hit
    # by every retry at the same second.
    jitter: float = 0.1
    rand: random.Random = field(default_factory=random.Random, compare=False)

    def decide(self, status_code: int | None, retry_after: str | None, attempt: int) -> Decision:
        """`attempt` counts attempts since the schedule (re)started, this one included."""
        if status_code is not None and 200 <= status_code < 300:
            return Decision(DELIVERED)
        if status_code == 410:  # the receiver says the endpoint is gone for good
            return Decision(STOPPED)
        if attempt > len(self.schedule):
            return Decision(FAILED)
        delay = self.schedule[attempt - 1] * (1 + self.jitter * self.rand.random())
        asked = parse_retry_after(retry_after)
        if asked is not None:
            # Honour the receiver's wish, but never wait longer than the longest planned step.
            delay = min(max(asked, 0.0), max(self.schedule))
        return Decision(PENDING, delay)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
