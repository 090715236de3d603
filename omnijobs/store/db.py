"""Database engine and sessions."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME
from sqlalchemy.orm import Session, sessionmaker

# Every process of a one-machine setup waits this long for another's write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class _UtcSqliteDateTime(SQLITE_DATETIME):
    """SQLite keeps no time zone: store UTC, and give timezone-aware columns back as aware UTC values.

    The store compares these values with aware `now`s; naive ones would raise TypeError there.
    """

    def bind_processor(self, dialect):
        inner = super().bind_processor(dialect)

        def process(value):
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            return inner(value) if inner else value

        return process

    def result_processor(self, dialect, coltype):
        inner = super().result_processor(dialect, coltype)
        if not self.timezone:
            return inner

        def process(value):
            value = inner(value) if inner else value
            return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value

        return process


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    engine.dialect.colspecs = {**engine.dialect.colspecs, DateTime: _UtcSqliteDateTime}

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(conn, _record):
        # The driver's own transaction handling is off: "begin" below decides how each one starts.
        conn.isolation_level = None
        conn.execute("PRAGMA journal_mode=WAL")  # the API reads while a worker writes
        conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        # NOTE: a deferred transaction that reads and then writes must upgrade its lock; when two
        # processes do that at once one gets SQLITE_BUSY at once (busy_timeout cannot help: waiting
        # would deadlock). Taking the write lock at BEGIN makes them queue instead. It also stands in
        # for SELECT ... FOR UPDATE, which SQLite does not have: one writer at a time serialises the
        # fan-in decisions the row lock serialises on Postgres.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
