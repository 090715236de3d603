"""/v1/jobs/{id}/deliveries: a job's webhook delivery log, and manual redelivery."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from api.auth import owner_scope
from api.deps import PrincipalDep
from api.schemas import ErrorResponse
from omnijobs.store.webhooks import DeliveryView, WebhookStore
from omnijobs.webhooks import relay
from omnijobs.webhooks.events import message_id
from workers.webhook_worker import CeleryDeliveryPublisher

router = APIRouter(prefix="/v1/jobs/{job_id}/deliveries", tags=["webhooks"])
ERRORS = {c: {"model": ErrorResponse} for c in (404, 409)}


class DeliveryPublic(BaseModel):
    id: str
    webhook_id: str
    event: str
    stage: str | None
    url: str
    status: str
    attempts: int
    last_status_code: int | None
    occurred_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    # One entry per attempt: {attempt, at, status_code, latency_ms, error}.
    log: list[dict[str, Any]]


class DeliveryList(BaseModel):
    data: list[DeliveryPublic]


def _public(d: DeliveryView) -> DeliveryPublic:
    return DeliveryPublic(
        id=str(d.id), webhook_id=message_id(d.id), event=d.event, stage=d.stage, url=d.url, status=d.status,
        attempts=d.attempts, last_status_code=d.last_status_code, occurred_at=d.occurred_at,
        next_attempt_at=d.next_attempt_at, delivered_at=d.delivered_at, log=d.log,
    )


def _store(request: Request) -> WebhookStore:
    return WebhookStore(request.app.state.store.engine)


@router.get("", response_model=DeliveryList, responses=ERRORS)
def list_deliveries(job_id: str, request: Request, principal: PrincipalDep) -> DeliveryList:
    return DeliveryList(data=[_public(d) for d in _store(request).list_for_job(job_id, owner_scope(principal))])


@router.post("/{delivery_id}/redeliver", status_code=202, response_model=DeliveryPublic, responses=ERRORS)
def redeliver(job_id: str, delivery_id: str, request: Request, principal: PrincipalDep) -> DeliveryPublic:
    """Send the event again now (same webhook-id, fresh timestamp and signature)."""
    publisher = CeleryDeliveryPublisher(request.app.state.celery)
    return _public(relay.redeliver(_store(request), publisher, job_id, delivery_id, owner_scope(principal)))
