from __future__ import annotations

import pytest

from tests.cluster import Cluster
from tests.conftest import ARTIFACTS

STAGES = ["chat.generate", "draft_rewrite.draft", "draft_rewrite.rewrite", "echo.say"]


@pytest.fixture(scope="session")
def cluster(settings_env):
    c = Cluster(settings_env, ARTIFACTS / "e2e-logs")
    try:
        started = [c.start_worker(stage) for stage in STAGES]
        c.start_api()
        c.start_reconciler()
        c.wait_workers_ready(started)
        yield c
    finally:
        c.stop()


@pytest.fixture()
def client(cluster):
    with cluster.client() as http:
        yield http
