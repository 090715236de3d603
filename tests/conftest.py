"""Session fixtures: a fresh Postgres database migrated to head, a clean Redis db, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services import create_database, drop_database, require_postgres, require_redis, REDIS_URL

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
FIXTURE_PIPELINES = REPO / "tests" / "fixtures" / "pipelines"


@pytest.fixture(scope="session")
def postgres_url():
    admin = require_postgres()
    url = create_database(admin)
    from omnijobs.store.migrate import upgrade

    upgrade(url)
    yield url
    drop_database(admin, url)


@pytest.fixture(scope="session")
def redis_url():
    client = require_redis()
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    from omnijobs.models.tiny import build_tiny

    path = Path(os.environ.get("OMNIJOBS_TEST_MODELS_DIR") or tmp_path_factory.mktemp("models"))
    build_tiny(path)
    return path


@pytest.fixture(scope="session")
def settings_env(postgres_url, redis_url, models_dir, tmp_path_factory) -> dict[str, str]:
    return {
        "OMNIJOBS_DATABASE_URL": postgres_url,
        "OMNIJOBS_BROKER_URL": redis_url,
        "OMNIJOBS_MODELS_DIR": str(models_dir),
        "OMNIJOBS_PIPELINES_PATH": str(FIXTURE_PIPELINES),
        "OMNIJOBS_ARTIFACTS_DIR": str(tmp_path_factory.mktemp("artifacts")),
        "OMNIJOBS_RETRY_BACKOFF_S": "0.2",
        "OMNIJOBS_LEASE_GRACE_S": "6",
        "OMNIJOBS_REQUEUE_AFTER_S": "5",
        "OMNIJOBS_RECONCILE_INTERVAL_S": "1",
        "OMNIJOBS_TORCH_THREADS": "1",
        "OMNIJOBS_TEST_ENGINE_LOG": str(tmp_path_factory.mktemp("enginelog") / "runs.jsonl"),
    }


@pytest.fixture(scope="session")
def settings(settings_env):
    from omnijobs.settings import Settings

    return Settings(**{k.removeprefix("OMNIJOBS_").lower(): v for k, v in settings_env.items()
                       if k.startswith("OMNIJOBS_") and not k.startswith("OMNIJOBS_TEST_")})


@pytest.fixture(scope="session")
def store(settings):
    from omnijobs.pipelines import load_registry
    from omnijobs.store.db import make_engine
    from omnijobs.store.jobs import JobStore

    return JobStore(make_engine(settings.database_url), load_registry(settings.pipelines_path))


@pytest.fixture(scope="module")
def private_store(settings):
    """A JobStore on a database of the module's own (migrated, dropped after the module)."""
    from omnijobs.pipelines import load_registry
    from omnijobs.store.db import make_engine
    from omnijobs.store.jobs import JobStore
    from omnijobs.store.migrate import upgrade

    admin = require_postgres()
    url = create_database(admin)
    upgrade(url)
    engine = make_engine(url)
    yield JobStore(engine, load_registry(settings.pipelines_path))
    engine.dispose()
    drop_database(admin, url)
