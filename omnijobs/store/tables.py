"""Tables. Alembic migrations in migrations/ must produce exactly this schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, MetaData, SmallInteger, String, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonValue = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _ts() -> Any:
    return DateTime(timezone=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(SmallInteger, default=0)
    inputs: Mapped[dict] = mapped_column(JsonValue)
    params: Mapped[dict] = mapped_column(JsonValue)
    meta: Mapped[dict] = mapped_column("metadata", JsonValue)
    outputs: Mapped[dict | None] = mapped_column(JsonValue)
    error: Mapped[dict | None] = mapped_column(JsonValue)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(_ts())
    updated_at: Mapped[datetime] = mapped_column(_ts())
    started_at: Mapped[datetime | None] = mapped_column(_ts())
    finished_at: Mapped[datetime | None] = mapped_column(_ts())
    # Webhook target and the event types it asked for (None: no webhook).
    webhook: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[list | None] = mapped_column(JsonValue)
    # Set when retention deleted the job's artifacts; the row itself stays.
    outputs_expired_at: Mapped[datetime | None] = mapped_column(_ts())

    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_idempotency", "owner", "idempotency_key", unique=True),
        Index("ix_jobs_finished_expired", "finished_at", "outputs_expired_at"),
    )


class StageRun(Base):
    __tablename__ = "stage_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(160))
    status: Mapped[str] = mapped_column(String(16))
    # Attempts started so far; a queue message names the value it expects, so stale copies no-op.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict] = mapped_column(JsonValue)
    inputs: Mapped[dict | None] = mapped_column(JsonValue)
    outputs: Mapped[dict | None] = mapped_column(JsonValue)
    error: Mapped[dict | None] = mapped_column(JsonValue)
    # One entry per failed attempt: {attempt, code, message, worker, at}.
    errors: Mapped[list] = mapped_column(JsonValue)
    progress: Mapped[dict | None] = mapped_column(JsonValue)
    worker: Mapped[str | None] = mapped_column(String(255))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    lease_until: Mapped[datetime | None] = mapped_column(_ts())
    enqueued_at: Mapped[datetime | None] = mapped_column(_ts())
    created_at: Mapped[datetime] = mapped_column(_ts())
    updated_at: Mapped[datetime] = mapped_column(_ts())
    started_at: Mapped[datetime | None] = mapped_column(_ts())
    finished_at: Mapped[datetime | None] = mapped_column(_ts())

    __table_args__ = (
        Index("ix_stage_runs_job_stage", "job_id", "stage", unique=True),
        Index("ix_stage_runs_status_lease", "status", "lease_until"),
        Index("ix_stage_runs_queue_status", "queue", "status"),
        # The admin stats read the runs that ended in a recent window.
        Index("ix_stage_runs_finished", "finished_at"),
    )


class WebhookDelivery(Base):
    """One webhook event of one job (the outbox row) and the log of its delivery attempts."""

    __tablename__ = "webhook_deliveries"

    # Sent as `webhook-id` (msg_<hex>): the same on every attempt, so receivers can deduplicate.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str | None] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    # pending | sending | delivered | failed | stopped
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts made before the last manual redelivery: the backoff schedule restarts there.
    schedule_from: Mapped[int] = mapped_column(Integer, default=0)
    # Frozen at the first attempt so every retry sends the same bytes.
    body: Mapped[str | None] = mapped_column(Text)
    # One entry per attempt: {attempt, at, status_code, latency_ms, error}.
    log: Mapped[list] = mapped_column(JsonValue)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(_ts())
    next_attempt_at: Mapped[datetime | None] = mapped_column(_ts())
    enqueued_at: Mapped[datetime | None] = mapped_column(_ts())
    lease_until: Mapped[datetime | None] = mapped_column(_ts())
    delivered_at: Mapped[datetime | None] = mapped_column(_ts())
    created_at: Mapped[datetime] = mapped_column(_ts())
    updated_at: Mapped[datetime] = mapped_column(_ts())

    __table_args__ = (
        Index("ix_webhook_deliveries_job", "job_id", "created_at"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # sha256 of the key: the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(_ts())
    revoked_at: Mapped[datetime | None] = mapped_column(_ts())

    __table_args__ = (Index("ix_api_keys_key_hash", "key_hash", unique=True),)


class WebhookSecret(Base):
    __tablename__ = "webhook_secrets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), ForeignKey("api_keys.id", ondelete="CASCADE"))
    # Kept in clear: signing needs it. Null expires_at = current; a rotated one expires after a grace period.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(_ts())
    expires_at: Mapped[datetime | None] = mapped_column(_ts())

    __table_args__ = (Index("ix_webhook_secrets_owner", "owner", "created_at"),)


class Worker(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(160))
    queue: Mapped[str] = mapped_column(String(160))
    device: Mapped[str] = mapped_column(String(32))
    engine: Mapped[str] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(512))
    started_at: Mapped[datetime] = mapped_column(_ts())
    last_heartbeat: Mapped[datetime] = mapped_column(_ts())
    stopped_at: Mapped[datetime | None] = mapped_column(_ts())
    batch_size: Mapped[int] = mapped_column(Integer, default=0)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_workers_last_heartbeat", "last_heartbeat"),)


class InputFile(Base):
    """One uploaded input file (image, audio, video); a job input names it as "file:<id>"."""

    __tablename__ = "files"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    artifact: Mapped[str] = mapped_column(String(1024))
    kind: Mapped[str] = mapped_column(String(16))
    content_type: Mapped[str] = mapped_column(String(128))
    # Integer suffices: uploads are capped far below 2 GiB (upload_max_bytes).
    bytes: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(_ts())

    __table_args__ = (Index("ix_files_owner_created", "owner", "created_at"),)
