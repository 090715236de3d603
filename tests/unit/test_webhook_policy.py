"""The delivery policy: what each answer leads to, backoff with jitter, Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from omnijobs.webhooks.policy import (
    DEFAULT_SCHEDULE,
    DELIVERED,
    FAILED,
    PENDING,
    STOPPED,
    DeliveryPolicy,
    parse_retry_after,
)


def policy(**kw) -> DeliveryPolicy:
    return DeliveryPolicy(rand=random.Random(7), **kw)


def test_2xx_delivers_410_stops_others_retry():
    p = policy()
    assert p.decide(200, None, 1).status == DELIVERED
    assert p.decide(204, None, 3).status == DELIVERED
    assert p.decide(410, None, 1).status == STOPPED
    for code in (None, 301, 400, 404, 429, 500, 503):
        assert p.decide(code, None, 1).status == PENDING, code


def test_schedule_over_hours_with_jitter_then_gives_up():
    p = policy(jitter=0.1)
    delays = [p.decide(500, None, n).delay_s for n in range(1, len(DEFAULT_SCHEDULE) + 1)]
    for got, planned in zip(delays, DEFAULT_SCHEDULE, strict=True):
        assert planned <= got <= planned * 1.1
    assert DEFAULT_SCHEDULE[:4] == (5.0, 300.0, 1800.0, 7200.0) and sum(DEFAULT_SCHEDULE) > 10 * 3600
    assert len({round(d / s, 6) for d, s in zip(delays, DEFAULT_SCHEDULE, strict=True)}) > 1  # jittered
    assert p.decide(500, None, len(DEFAULT_SCHEDULE) + 1).status == FAILED


def test_retry_after_is_honoured_and_capped():
    p = policy(schedule=(5.0, 60.0))
    assert p.decide(503, "42", 1).delay_s == 42.0
    assert p.decide(429, "999999", 1).delay_s == 60.0  # never beyond the longest planned step
    assert p.decide(503, "soon", 1).delay_s >= 5.0  # unreadable: the schedule applies
    now = datetime.now(UTC)
    assert 29 <= parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) <= 30
    assert parse_retry_after(None) is None
