"""Dependency outages under load: Postgres and Redis stopped while clients keep submitting.

Clients see 202 or a 503 with Retry-After and the error object, never a 500; /readyz names what is
down; a client that retries a 503 with its Idempotency-Key gets exactly one job; every accepted job
ends `succeeded` once the dependency is back, with no process restarted.

This module runs a Postgres and a Redis server of its own (both are stopped here).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest
import sqlalchemy as sa

from tests.cluster import FINAL, Cluster
from tests.conftest import ARTIFACTS, FIXTURE_PIPELINES
from tests.private_services import PrivatePostgres, PrivateRedis

OUTAGE_S = 15
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    log_dir = ARTIFACTS / "e2e-outage-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pg = PrivatePostgres()
    pg.init()
    pg.start()
    broker = PrivateRedis(log_dir / "redis.log")
    broker.start()
    tmp = tmp_path_factory.mktemp("outage")
    db_url = pg.create_database()
    from omnijobs.store.migrate import upgrade

    upgrade(db_url)
    env = {"OMNIJOBS_PIPELINES_PATH": str(FIXTURE_PIPELINES), "OMNIJOBS_MODELS_DIR": str(tmp / "models"),
           "OMNIJOBS_ARTIFACTS_DIR": str(tmp / "artifacts"), "OMNIJOBS_TORCH_THREADS": "1",
           "OMNIJOBS_DATABASE_URL": db_url, "OMNIJOBS_BROKER_URL": broker.url, "OMNIJOBS_RATE_LIMIT_PER_S": "0",
           "OMNIJOBS_RECONCILE_INTERVAL_S": "1", "OMNIJOBS_RETRY_BACKOFF_S": "0.2"}
    cluster = Cluster(env, log_dir)
    db = sa.create_engine(db_url, pool_pre_ping=True)
    try:
        started = [cluster.start_worker("echo.say")]
        cluster.start_api()
        cluster.start_reconciler()
        cluster.wait_workers_ready(started)
        yield cluster, db, pg, broker
    finally:
        cluster.stop()
        db.dispose()
        broker.stop()
        pg.remove()
        if FIGURES:
            (ARTIFACTS / "outage-figures.json").write_text(json.dumps(FIGURES, indent=2))
            print("\noutage figures: " + json.dumps(FIGURES))


class Load:
    """Clients submitting one job after another, each retrying a 503 with its own Idempotency-Key."""

    def __init__(self, cluster: Cluster, clients: int = 4):
        self.cluster = cluster
        self.stop = threading.Event()
        self.answers: Counter[int] = Counter()
        self.bad: list[str] = []
        self.accepted: dict[str, str] = {}  # idempotency key -> job id
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self) -> None:
        with self.cluster.client(timeout=30) as http:
            while not self.stop.is_set():
                key = str(uuid.uuid4())
                while True:
                    try:
                        resp = http.post("/v1/jobs", json={"pipeline": "echo", "inputs": {"prompt": key}},
                                         headers={"Idempotency-Key": key})
                    except httpx.HTTPError as exc:
                        with self._lock:
                            self.bad.append(f"{type(exc).__name__}: {exc}")
                        break
                    self._note(resp)
                    if resp.status_code == 202:
                        with self._lock:
                            self.accepted[key] = resp.json()["id"]
                        break
                    if resp.status_code != 503 or self.stop.is_set():
                        break
                    time.sleep(0.3)  # Retry-After says 5 s; a test need not wait that long
                time.sleep(0.05)

    def _note(self, resp: httpx.Response) -> None:
        with self._lock:
            self.answers[resp.status_code] += 1
            if resp.status_code == 503:
                error = resp.json().get("error", {})
                if not (resp.headers.get("retry-after") and error.get("code") == "unavailable" and error.get("message")):
                    self.bad.append(f"503 without Retry-After or error object: {resp.headers} {resp.text[:200]}")
            elif resp.status_code != 202:
                self.bad.append(f"{resp.status_code}: {resp.text[:300]}")


def _readyz(cluster: Cluster) -> httpx.Response:
    return httpx.get(f"{cluster.api_url}/readyz", timeout=30)


def _wait_down(cluster: Cluster, dependency: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        resp = _readyz(cluster)
        if resp.status_code == 503 and dependency in resp.json().get("down", []):
            return resp.json()
        assert time.monotonic() < deadline, f"/readyz never said {dependency} is down: {resp.text}"
        time.sleep(0.2)


def _wait_all_final(db: sa.Engine, ids: list[str], timeout: float) -> float:
    started = time.monotonic()
    while True:
        try:
            with db.connect() as conn:
                left = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status NOT IN :final")
                                    .bindparams(sa.bindparam("final", expanding=True)),
                                    {"ids": ids, "final": list(FINAL)}).scalar()
        except sa.exc.OperationalError:
            left = len(ids)
        if left == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{left} of {len(ids)} accepted jobs not final after {timeout}s")
        time.sleep(0.2)


def _check_outcome(db: sa.Engine, load: Load, name: str, back_to_done_s: float) -> None:
    ids = list(load.accepted.values())
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT idempotency_key, status, outputs FROM jobs WHERE idempotency_key = ANY(:k)"),
                            {"k": list(load.accepted)}).all()
        runs = conn.execute(sa.text("SELECT job_id, count(*) FROM stage_runs WHERE job_id = ANY(:ids) "
                                    "AND status = 'succeeded' GROUP BY job_id"), {"ids": ids}).all()
    per_key = Counter(r.idempotency_key for r in rows)
    FIGURES[name] = {"submits": sum(load.answers.values()), "accepted": len(ids), "answers": dict(load.answers),
                     "5xx_seen": sum(n for s, n in load.answers.items() if s >= 500),
                     "500_seen": load.answers.get(500, 0), "lost": len(ids) - len(rows),
                     "duplicated": sum(n - 1 for n in per_key.values()),
                     "back_to_all_done_s": round(back_to_done_s, 1)}
    assert not load.bad, load.bad[:5]
    assert load.answers[503] > 0, "the outage was never seen by a client"
    assert len(rows) == len(ids) and max(per_key.values()) == 1, per_key.most_common(3)
    assert Counter(r.status for r in rows) == {"succeeded": len(ids)}
    assert all(r.outputs["text"] == f"say({r.idempotency_key})" for r in rows)
    assert len(runs) == len(ids) and all(n == 1 for _, n in runs)


def test_postgres_down_under_load_is_503_and_every_accepted_job_ends(stack):
    cluster, db, pg, _ = stack
    with Load(cluster) as load:
        time.sleep(2)
        pg.stop("immediate")
        down = _wait_down(cluster, "database")
        assert down["checks"]["broker"] == "ok"
        assert httpx.get(f"{cluster.api_url}/healthz", timeout=10).status_code == 200
        time.sleep(OUTAGE_S)
        pg.start()
        back = time.monotonic()
        time.sleep(3)
    assert _readyz(cluster).status_code == 200
    _wait_all_final(db, list(load.accepted.values()), timeout=120)
    _check_outcome(db, load, "postgres_outage", time.monotonic() - back)


def test_redis_down_under_load_is_503_and_every_accepted_job_ends(stack):
    cluster, db, _, broker = stack
    with Load(cluster) as load:
        time.sleep(2)
        broker.stop()
        down = _wait_down(cluster, "broker")
        assert down["checks"]["database"] == "ok"
        time.sleep(OUTAGE_S)
        broker.start()
        back = time.monotonic()
        time.sleep(3)
    assert _readyz(cluster).status_code == 200
    _wait_all_final(db, list(load.accepted.values()), timeout=120)
    _check_outcome(db, load, "redis_outage", time.monotonic() - back)
