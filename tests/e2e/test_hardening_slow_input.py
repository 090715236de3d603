"""Slow input URLs must not freeze the API: dozens of submits naming a server that trickles its
headers once took every request thread, /healthz included, for minutes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cluster import isolated_cluster
from tests.conftest import ARTIFACTS
from tests.slow_server import Trickler

SUBMITS = 60


@pytest.fixture()
def trickler():
    server = Trickler(pause_s=0.2)
    yield server
    server.close()


@pytest.fixture()
def api(settings_env, tmp_path):
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-slow-input-logs", {}, tmp_path,
                          OMNIJOBS_ALLOWED_PRIVATE_HOSTS="127.0.0.1", OMNIJOBS_URL_FETCH_TIMEOUT_S="3",
                          OMNIJOBS_URL_FETCH_CONCURRENCY="8", OMNIJOBS_URL_FETCH_PER_KEY="4") as cluster:
        yield cluster


def test_trickling_input_urls_end_by_the_deadline_and_the_api_keeps_answering(api, trickler):
    body = {"pipeline": "media_echo", "inputs": {"prompt": "p", "image": trickler.url}}

    def submit(_):
        with api.client(timeout=120) as http:
            resp = http.post("/v1/jobs", json=body)
            return resp.status_code, resp.json()["error"]

    with ThreadPoolExecutor(SUBMITS) as pool:
        answers = pool.map(submit, range(SUBMITS))
        # While the submits are in flight: health, readiness and other routes still answer.
        with api.client(timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert http.get("/v1/jobs").status_code == 200
        answers = list(answers)
    timed_out = [e for s, e in answers if s == 422]
    refused = [e for s, e in answers if s == 429]
    assert len(timed_out) + len(refused) == SUBMITS, answers
    assert timed_out and all("timed out" in e["message"] and e["field"] == "inputs.image" for e in timed_out)
    # The rest were over the caps (8 in all, 4 per key) and told so at once.
    assert refused and all("url_fetch_per_key" in e["message"] or "url_fetch_concurrency" in e["message"]
                           for e in refused)
    with api.client() as http:
        assert http.get("/v1/jobs").json()["data"] == []  # nothing was written
