"""Tables. Alembic migrations in migrations/ must produce exactly this schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, MetaData, SmallInteger, String, Uuid
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

    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_idempotency", "owner", "idempotency_key", unique=True),
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
    )
