"""Sending one delivery attempt: claim, sign, POST, and record what happened.

NOTE: a send is bounded in total (`timeout_s` for connect, request and answer together, through
the guarded client's deadline), always well inside its lease, so a slow receiver can never be
sent a delivery again while the first send still runs. Sends to one key's receivers are capped
per process (`per_key`): a claimed delivery over the cap goes back to pending for a moment
without counting an attempt, so one key's slow receiver cannot hold every sender thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from omnijobs.errors import InvalidInput
from omnijobs.netguard import Refused, check_url
from omnijobs.outbound import deadline
from omnijobs.store.records import JobView
from omnijobs.store.webhooks import ClaimedDelivery, WebhookStore
from omnijobs.webhooks import events, signing
from omnijobs.webhooks.policy import FAILED, STOPPED, Decision, DeliveryPolicy
from omnijobs.webhooks.secrets import SecretSource

log = logging.getLogger(__name__)

# Enough of an error answer to tell what went wrong, not enough to fill the log table.
ERROR_SNIPPET = 200
# A delivery over its key's cap is tried again this soon (it was not attempted).
DEFER_S = 1.0


@dataclass(frozen=True)
class Response:
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after: str | None = None


def post(client: httpx.Client, url: str, body: str, headers: dict[str, str], timeout_s: float) -> Response:
    """One POST, ended by `timeout_s` in all however slowly the receiver answers."""
    started = time.monotonic()
    try:
        # Redirects are not followed: the target was checked, the place it redirects to was not.
        with deadline(timeout_s), client.stream("POST", url, content=body.encode(), headers=headers,
                                                timeout=timeout_s, follow_redirects=False) as resp:
            error = None
            if not 200 <= resp.status_code < 300:
                head = next(resp.iter_bytes(), b"")[:ERROR_SNIPPET].decode(errors="replace")
                error = f"HTTP {resp.status_code}" + (f": {head}" if head else "")
            return Response(resp.status_code, _ms(started), error, resp.headers.get("retry-after"))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
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
        per_key: int = 0,
    ):
        self.store = store
        self.load_job = load_job
        self.render = render
        self.secrets = secrets
        self.policy = policy
        self.client = client
        # The send must end well inside the lease, or the relay would take it as lost and send it again.
        self.timeout_s = min(timeout_s, lease_s / 2)
        self.lease_s = lease_s
        self.allowed_hosts = allowed_hosts
        self.per_key = per_key
        self._sending: Counter[str | None] = Counter()
        self._lock = threading.Lock()

    def deliver(self, delivery_id: str, attempts: int) -> str | None:
        """One attempt of one delivery; returns its new status, or None if the message was stale
        or the delivery was put off (its key is at its cap).

        Any failure of the attempt is recorded as that delivery's error: one bad delivery never
        stops the sender, nor leaves its row to the lease sweep.
        """
        claimed = self.store.claim(delivery_id, attempts, self.lease_s, _now())
        if claimed is None:
            return None
        with self._slot(claimed.owner) as free:
            if not free:
                self.store.put_off(claimed, DEFER_S, _now())
                return None
            try:
                return self._attempt(claimed)
            except Exception as exc:  # noqa: BLE001 - anything else: this delivery's error, retried as planned
                log.exception("delivery %s: attempt failed unexpectedly", claimed.id)
                decision = self.policy.decide(None, None, claimed.attempt - claimed.schedule_from)
                return self._record(claimed, claimed.body, Response(None, 0.0, f"{type(exc).__name__}: {exc}"),
                                    decision)

    @contextlib.contextmanager
    def _slot(self, owner: str | None) -> Iterator[bool]:
        with self._lock:
            free = not self.per_key or self._sending[owner] < self.per_key
            if free:
                self._sending[owner] += 1
        try:
            yield free
        finally:
            if free:
                with self._lock:
                    self._sending[owner] -= 1
                    if not self._sending[owner]:
                        del self._sending[owner]

    def _attempt(self, claimed: ClaimedDelivery) -> str:
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
        try:
            resp = post(self.client, claimed.url, body, headers, self.timeout_s)
        except Refused as exc:  # the name now resolves to a private address (DNS rebinding)
            return self._record(claimed, body, Response(None, 0.0, exc.message), Decision(STOPPED))
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
