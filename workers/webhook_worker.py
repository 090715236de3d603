"""`omnijobs webhooks`: the process that delivers signed webhooks from the `omni.webhooks` queue.

NOTE: a process of its own rather than part of the reconciler: sending waits on other people's
servers (up to webhook_timeout_s in all per attempt, many at once), so it runs on a thread pool and scales with its
own replicas, while the reconciler's sweep must stay short and regular to keep stage leases and
lost messages in check. The process also relays due deliveries from the outbox table to the queue
every `webhook_relay_interval_s` (first sends and scheduled retries); the reconciler runs the same
relay, so deliveries still go out while no webhook process runs the relay, and lost messages are
sent again. Several relays at once are safe: each row is marked before it is published.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence

from celery import Celery

from omnijobs.settings import Settings
from omnijobs.webhooks.relay import WEBHOOK_QUEUE, WEBHOOK_TASK, DeliveryTask

log = logging.getLogger("omnijobs.webhooks")


class CeleryDeliveryPublisher:
    def __init__(self, app: Celery):
        self.app = app

    def publish_deliveries(self, tasks: Sequence[DeliveryTask]) -> None:
        with self.app.producer_or_acquire() as producer:
            for task in tasks:
                self.app.send_task(WEBHOOK_TASK, args=task.args(), queue=WEBHOOK_QUEUE, routing_key=WEBHOOK_QUEUE,
                                   producer=producer, retry=True,
                                   retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})


def build_sender(settings: Settings, engine):
    from api.schemas import job_public
    from omnijobs.pipelines import load_registry
    from omnijobs.store.jobs import JobStore
    from omnijobs.store.keys import KeyStore
    from omnijobs.outbound import guarded_client
    from omnijobs.store.webhooks import WebhookStore
    from omnijobs.webhooks.policy import DeliveryPolicy
    from omnijobs.webhooks.secrets import SecretSource, parse_secrets
    from omnijobs.webhooks.sender import Sender

    jobs = JobStore(engine, load_registry(settings.pipelines_path))
    base_url = settings.api_base_url.rstrip("/")
    return Sender(
        WebhookStore(engine),
        jobs.get_job,
        # `data` is the job exactly as GET /v1/jobs/{id} shows it.
        lambda view: job_public(view, base_url).model_dump(mode="json"),
        SecretSource(parse_secrets(settings.webhook_secret), KeyStore(engine)),
        DeliveryPolicy(tuple(settings.webhook_retry_schedule_s), settings.webhook_jitter),
        # The same SSRF-safe client as input fetches: it connects only to the address it checked.
        guarded_client(settings.private_hosts_allowed, headers={"user-agent": "omnijobs-webhooks"}),
        timeout_s=settings.webhook_timeout_s,
        lease_s=settings.webhook_lease_s,
        allowed_hosts=settings.private_hosts_allowed,
        per_key=settings.webhook_per_key_concurrency,
    )


def _relay_loop(store, publisher, settings: Settings, stop: threading.Event) -> None:
    from omnijobs.webhooks.relay import relay

    while not stop.wait(settings.webhook_relay_interval_s):
        try:
            relay(store, publisher, settings.requeue_after_s)
        except Exception:  # a database blip: the next pass tries again
            log.exception("webhook relay pass failed")


def run_webhook_worker(settings: Settings, loglevel: str = "INFO") -> None:
    from omnijobs.store.db import make_engine
    from omnijobs.store.webhooks import WebhookStore
    from workers.celery_app import make_celery

    engine = make_engine(settings.database_url, pool_size=max(2, settings.webhook_concurrency))
    sender = build_sender(settings, engine)
    app = make_celery(settings, prefetch=1)

    @app.task(name=WEBHOOK_TASK, acks_late=True)
    def deliver_webhook(delivery_id: str, attempts: int) -> None:
        sender.deliver(delivery_id, int(attempts))

    stop = threading.Event()
    threading.Thread(target=_relay_loop, args=(WebhookStore(engine), CeleryDeliveryPublisher(app), settings, stop),
                     name="webhook-relay", daemon=True).start()
    log.info("webhook worker: %d sender thread(s), consuming %s", settings.webhook_concurrency, WEBHOOK_QUEUE)
    app.Worker(
        hostname=f"webhooks@{socket.gethostname()}.{os.getpid()}",
        queues=[WEBHOOK_QUEUE],
        pool="threads",
        concurrency=settings.webhook_concurrency,
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
    ).start()
