"""Sending one delivery attempt: claim, sign, POST, and record what happened."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from omnijobs.errors import InvalidInput
from omnijobs.netguard import check_url
from omnijobs.store.records import JobView
from omnijobs.store.webhooks import ClaimedDelivery, WebhookStore
from omnijobs.webhooks import events, signing
from omnijobs.webhooks.policy import FAILED, STOPPED, Decision, DeliveryPolicy
from omnijobs.webhooks.secrets import SecretSource

log = logging.getLogger(__name__)

# Enough of an error answer to tell what went wrong, not enough to fill the log table.
ERROR_SNIPPET = 200


@dataclass(frozen=True)
class Response:
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after: str | None = None


def post(client: httpx.Client, url: str, body: str, headers: dict[str, str], timeout_s: float) -> Response:
    started = time.monotonic()
    try:
        # Redirects are not followed: the target was checked, the place it redirects to was not.
        with client.stream("POST", url, content=body.encode(), headers=headers, timeout=timeout_s,
                           follow_redirects=False) as resp:
            error = None
            if not 200 <= resp.status_code < 300:
                head = next(resp.iter_bytes(), b"")[:ERROR_SNIPPET].decode(errors="replace")
                error = f"HTTP {resp.status_code}" + (f": {head}" if head else "")
            return Response(resp.status_code, _ms(started), error, resp.headers.get("retry-after"))
    except httpx.HTTPError as exc:
        return Response(None, _ms(started), f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class Sender:
    def __init__(
        self,
        store: WebhookStore,
        load_job: Callable[[str], JobView],
        render: Callable[[JobView], dict],
        secrets: SecretSource,
        policy: DeliveryPolicy,
        client: httpx.Client,
        *,
        timeout_s: float = 15.0,
        lease_s: float = 60.0,
        allowed_hosts: frozenset[str] = frozenset(),
    ):
        self.store = store
        self.load_job = load_job
        self.render = render
        self.secrets = secrets
        self.policy = policy
        self.client = client
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.allowed_hosts = allowed_hosts

    def deliver(self, delivery_id: str, attempts: int) -> str | None:
        """One attempt of one delivery; returns its new status, or None if the message was stale."""
        claimed = self.store.claim(delivery_id, attempts, self.lease_s, _now())
        if claimed is None:
            return None
        body = claimed.body
        try:
            if body is None:
                job = self.render(self.load_job(str(claimed.job_id)))
                body = events.payload(claimed.event, claimed.occurred_at, job, claimed.stage)
            # Checked again at send time: the name may resolve elsewhere than it did at submit.
            check_url(claimed.url, field="webhook", allowed_hosts=self.allowed_hosts)
            secrets = self.secrets.for_owner(claimed.owner)
        except InvalidInput as exc:
            return self._record(claimed, body, Response(None, 0.0, exc.message), Decision(STOPPED))
        if not secrets:
            error = "no webhook signing secret for this job (set OMNIJOBS_WEBHOOK_SECRET or use an API key)"
            return self._record(claimed, body, Response(None, 0.0, error), Decision(FAILED))
        timestamp = int(time.time())
        headers = signing.headers(events.message_id(claimed.id), timestamp, body, secrets)
        resp = post(self.client, claimed.url, body, headers, self.timeout_s)
        decision = self.policy.decide(resp.status_code, resp.retry_after, claimed.attempt - claimed.schedule_from)
        return self._record(claimed, body, resp, decision)

    def _record(self, claimed: ClaimedDelivery, body: str | None, resp: Response, decision: Decision) -> str:
        entry = {"status_code": resp.status_code, "latency_ms": resp.latency_ms, "error": resp.error}
        if resp.retry_after is not None:
            entry["retry_after"] = resp.retry_after
        if not self.store.record(claimed, body, entry, decision, _now()):
            log.warning("delivery %s: claim lost before its result was recorded", claimed.id)
        log.info("delivery %s (%s) attempt %d: %s -> %s", claimed.id, claimed.event, claimed.attempt,
                 resp.status_code or resp.error, decision.status)
        return decision.status


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _now() -> datetime:
    return datetime.now(UTC)
