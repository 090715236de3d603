"""Accepting a job: validate, write job + stage runs in one transaction, then enqueue."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from omnijobs.dispatch import Publisher, publish_committed
from omnijobs.errors import InvalidInput
from omnijobs.inputs import MediaInputs, Resolved
from omnijobs.media import KINDS
from omnijobs.pipelines import PipelineRegistry
from omnijobs.store.jobs import JobStore
from omnijobs.store.records import JobView
from omnijobs.submission import reject_nul, validate_inputs, validate_params
from omnijobs.webhooks.events import validate_webhook


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def submit(
    store: JobStore,
    registry: PipelineRegistry,
    publisher: Publisher,
    *,
    pipeline: str,
    inputs: Any,
    params: Any = None,
    priority: int = 0,
    metadata: dict | None = None,
    owner: str | None = None,
    idempotency_key: str | None = None,
    media: MediaInputs | None = None,
    webhook: Any = None,
    webhook_events_filter: Any = None,
    allowed_hosts: frozenset[str] = frozenset(),
) -> tuple[JobView, bool]:
    """Returns (job, created). Raises RequestError subclasses before anything is written.

    `media` stores the job's media inputs (uploads, data URIs, URLs); without it they are refused.
    """
    spec = registry.get(pipeline)
    reject_nul({"inputs": inputs, "params": params, "metadata": metadata})
    clean_inputs = validate_inputs(spec, inputs)
    clean_params = validate_params(spec, params)
    hook, hook_events = validate_webhook(webhook, webhook_events_filter, allowed_hosts)
    digest = None
    if idempotency_key is not None:
        hashed = {"pipeline": pipeline, "inputs": inputs, "params": params, "priority": priority,
                  "metadata": metadata}
        if hook is not None:  # only then, so digests of requests without a webhook stay as they were
            hashed |= {"webhook": hook, "webhook_events_filter": hook_events}
        digest = request_hash(hashed)
        existing = store.find_idempotent(owner, idempotency_key, digest)
        if existing is not None:
            return existing, False
    job_id = uuid.uuid4()
    resolved = _resolve_media(media, spec, clean_inputs, owner, job_id)
    try:
        job, tasks, created = store.create_job(
            spec, resolved.inputs, clean_params, priority=priority, metadata=metadata, owner=owner,
            idempotency_key=idempotency_key, request_hash=digest, job_id=job_id,
            webhook=hook, webhook_events=hook_events,
        )
    except BaseException:
        if media is not None:
            media.discard(resolved.stored)
        raise
    if not created and media is not None:  # a concurrent twin was written first: ours is not needed
        media.discard(resolved.stored)
    # Never raises: the job is committed, so it is accepted whatever the broker says now.
    publish_committed(store, publisher, tasks)
    return job, created


def _resolve_media(media: MediaInputs | None, spec, inputs: dict[str, Any], owner: str | None,
                   job_id: uuid.UUID) -> Resolved:
    if media is not None:
        return media.resolve(spec, inputs, owner, job_id=job_id)
    for name in inputs:
        if spec.inputs[name].type in KINDS:
            raise InvalidInput("media inputs are not accepted here", field=f"inputs.{name}")
    return Resolved(inputs, [])
