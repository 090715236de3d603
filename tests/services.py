"""The real services tests run against. A missing service fails the test run; it never skips."""

from __future__ import annotations

import os
import uuid

import pytest
import redis
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("OMNIJOBS_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("OMNIJOBS_TEST_REDIS", "redis://127.0.0.1:6379/7")

HOW_TO_START = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}


def require_postgres() -> sa.Engine:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        pytest.fail(f"Postgres is not reachable at {PG_ADMIN_URL} ({exc}); start it: {HOW_TO_START['postgres']}")
    return engine


def require_redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it: {HOW_TO_START['redis']}")
    return client


def spare_redis_url(offset: int) -> str:
    """Another Redis db beside the session's, emptied, for a cluster whose queues must be its own.

    Clusters that share a Redis db also share queue names: a worker of one would take (and drop,
    finding no such run in its database) the messages of another.
    """
    url = redis.connection.parse_url(REDIS_URL)
    spare = REDIS_URL.rsplit("/", 1)[0] + f"/{(int(url.get('db', 0)) + offset) % 16}"
    redis.Redis.from_url(spare).flushdb()
    return spare


def create_database(admin: sa.Engine) -> str:
    name = f"omnijobs_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return admin.url.set(database=name).render_as_string(hide_password=False)


def drop_database(admin: sa.Engine, url: str) -> None:
    name = sa.make_url(url).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
