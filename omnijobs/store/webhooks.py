"""The webhook outbox: events written with the job's state change, and their delivery log.

NOTE: an event row is added in the same transaction as the state change it reports (see
`record_event`, called from JobStore), so an event exists if and only if the change committed.
Delivery then runs from this table at least once: a message on the webhook queue only says
"look at row X, attempt N"; the row holds the schedule, and a lost message is re-sent by the relay.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from omnijobs.errors import Conflict, NotFound
from omnijobs.store.db import make_sessions
from omnijobs.store.tables import Job, WebhookDelivery
from omnijobs.webhooks.events import DEFAULT_FILTER
from omnijobs.webhooks.policy import PENDING, Decision

SENDING = "sending"
_RANK = {"job.started": 0, "job.stage_completed": 1}


@dataclass(frozen=True)
class ClaimedDelivery:
    id: uuid.UUID
    job_id: uuid.UUID
    owner: str | None
    event: str
    stage: str | None
    url: str
    attempt: int  # attempts made, this one included
    schedule_from: int
    body: str | None
    occurred_at: datetime


@dataclass(frozen=True)
class DeliveryView:
    id: uuid.UUID
    job_id: uuid.UUID
    event: str
    stage: str | None
    url: str
    status: str
    attempts: int
    log: list
    last_status_code: int | None
    occurred_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


def record_event(s: Session, job: Job, event: str, now: datetime, stage: str | None = None) -> None:
    """Add the outbox row for `event` if the job has a webhook asking for it. Call inside the
    transaction that makes the change."""
    if not job.webhook:
        return
    if event not in (job.webhook_events if job.webhook_events is not None else DEFAULT_FILTER):
        return
    s.add(WebhookDelivery(
        id=uuid.uuid4(), job_id=job.id, event=event, stage=stage, url=job.webhook, status=PENDING, attempts=0,
        schedule_from=0, log=[], occurred_at=now, next_attempt_at=now, created_at=now, updated_at=now,
    ))


class WebhookStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = make_sessions(engine)

    def claim(self, delivery_id: uuid.UUID | str, attempts: int, lease_s: float, now: datetime) -> ClaimedDelivery | None:
        """Take a due delivery for one attempt. A duplicate or stale message matches nothing."""
        with self._sessions.begin() as s:
            row = s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == _uuid(delivery_id), WebhookDelivery.status == PENDING,
                       WebhookDelivery.attempts == attempts, WebhookDelivery.next_attempt_at <= now)
                .values(status=SENDING, attempts=WebhookDelivery.attempts + 1,
                        lease_until=now + timedelta(seconds=lease_s), updated_at=now)
                .returning(WebhookDelivery)
            ).scalar_one_or_none()
            if row is None:
                return None
            owner = s.scalar(select(Job.owner).where(Job.id == row.job_id))
            return ClaimedDelivery(row.id, row.job_id, owner, row.event, row.stage, row.url, row.attempts,
                                   row.schedule_from, row.body, row.occurred_at)

    def record(self, claimed: ClaimedDelivery, body: str | None, entry: dict, decision: Decision,
               now: datetime) -> bool:
        """Write one attempt's outcome; False if the claim was lost meanwhile (lease expired)."""
        with self._sessions.begin() as s:
            row = s.get(WebhookDelivery, claimed.id, with_for_update=True)
            if row is None or row.status != SENDING or row.attempts != claimed.attempt:
                return False
            row.log = [*row.log, {"attempt": claimed.attempt, "at": now.isoformat(), **entry}]
            row.body = row.body or body
            row.status = decision.status
            row.last_status_code = entry.get("status_code")
            row.lease_until = None
            row.updated_at = now
            row.next_attempt_at = now + timedelta(seconds=decision.delay_s) if decision.status == PENDING else None
            if decision.status == "delivered":
                row.delivered_at = now
            return True

    def put_off(self, claimed: ClaimedDelivery, delay_s: float, now: datetime) -> bool:
        """Hand a claimed delivery back unsent, its attempt not counted, due again in `delay_s`."""
        with self._sessions.begin() as s:
            return s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == claimed.id, WebhookDelivery.status == SENDING,
                       WebhookDelivery.attempts == claimed.attempt)
                .values(status=PENDING, attempts=claimed.attempt - 1, lease_until=None, enqueued_at=None,
                        next_attempt_at=now + timedelta(seconds=delay_s), updated_at=now)
            ).rowcount == 1

    def take_due(self, stale_after_s: float, now: datetime, limit: int = 500) -> list[tuple[uuid.UUID, int]]:
        """Deliveries to put on the queue now, marked as enqueued: (id, attempts made).

        Due means pending and its time has come, and not already handed to the queue for this
        attempt, unless that was `stale_after_s` ago (the message was lost). A send whose sender
        died (lease over) is counted as a failed attempt and retried at once.
        """
        stale = now - timedelta(seconds=stale_after_s)
        with self._sessions.begin() as s:
            lost = s.scalars(select(WebhookDelivery).where(
                WebhookDelivery.status == SENDING, WebhookDelivery.lease_until < now).with_for_update(skip_locked=True))
            for row in lost:
                row.log = [*row.log, {"attempt": row.attempts, "at": now.isoformat(), "status_code": None,
                                      "latency_ms": None, "error": "the sender stopped before recording a result"}]
                row.status, row.lease_until, row.next_attempt_at, row.updated_at = PENDING, None, now, now
            s.flush()
            rows = s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now,
                       or_(WebhookDelivery.enqueued_at.is_(None),
                           WebhookDelivery.enqueued_at < WebhookDelivery.next_attempt_at,
                           WebhookDelivery.enqueued_at < stale))
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.enqueued_at = now
            return [(r.id, r.attempts) for r in rows]

    def unmark_enqueued(self, ids: list[uuid.UUID]) -> None:
        """The broker refused these: let the next relay pass take them again."""
        if ids:
            with self._sessions.begin() as s:
                s.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(ids)).values(enqueued_at=None))

    def list_for_job(self, job_id: uuid.UUID | str, owner: str | None = None) -> list[DeliveryView]:
        with self._sessions() as s:
            self._job(s, job_id, owner)
            rows = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == _uuid(job_id)))
            # Events of one transaction share a time: a stage completes before the job does.
            return [_view(r) for r in sorted(rows, key=lambda r: (r.created_at, _RANK.get(r.event, 2)))]

    def redeliver(self, job_id: uuid.UUID | str, delivery_id: uuid.UUID | str, owner: str | None = None,
                  now: datetime | None = None) -> tuple[DeliveryView, int]:
        """Send an event again now, with the same webhook-id; the backoff schedule starts over.
        Returns the delivery and the attempt count its message must name."""
        with self._sessions.begin() as s:
            self._job(s, job_id, owner)
            row = s.scalars(select(WebhookDelivery).where(
                and_(WebhookDelivery.id == _uuid(delivery_id, "delivery"), WebhookDelivery.job_id == _uuid(job_id)))
                .with_for_update()).one_or_none()
            if row is None:
                raise NotFound(f"no delivery '{delivery_id}' for job '{job_id}'", field="delivery_id")
            if row.status == SENDING:
                raise Conflict("this delivery is being sent right now", field="delivery_id")
            now = now or datetime.now(UTC)
            row.status, row.schedule_from, row.next_attempt_at = PENDING, row.attempts, now
            row.enqueued_at, row.updated_at = now, now
            s.flush()
            return _view(row), row.attempts

    @staticmethod
    def _job(s: Session, job_id: uuid.UUID | str, owner: str | None) -> None:
        job_owner = s.execute(select(Job.id, Job.owner).where(Job.id == _uuid(job_id))).one_or_none()
        if job_owner is None or (owner is not None and job_owner.owner != owner):
            raise NotFound(f"no job '{job_id}'", field="id")


def _view(r: WebhookDelivery) -> DeliveryView:
    return DeliveryView(r.id, r.job_id, r.event, r.stage, r.url, r.status, r.attempts, list(r.log),
                        r.last_status_code, r.occurred_at, r.next_attempt_at, r.delivered_at, r.created_at)


def _uuid(value: uuid.UUID | str, what: str = "job") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no {what} '{value}'", field="id" if what == "job" else f"{what}_id") from None
