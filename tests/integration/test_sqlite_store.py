"""The job store, migrations and reconciler on SQLite with kombu's file-system broker: what
`omnijobs dev` runs on, through the same code as Postgres and Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from omnijobs.messages import STAGE_TASK
from omnijobs.pipelines import load_registry
from omnijobs.reconciler import sweep
from omnijobs.settings import Settings
from omnijobs.store.db import make_engine
from omnijobs.store.jobs import JobStore
from omnijobs.store.migrate import upgrade
from omnijobs.store.tables import Base
from tests.cluster import REPO
from tests.conftest import FIXTURE_PIPELINES

JOBS = 20

# One process of the race below: claims and completes the `branch` run of every job, all at once
# with the other process doing the other branch. Prints how many join tasks its completions made.
_BRANCH = """
import json, sys, time
from omnijobs.pipelines import load_registry
from omnijobs.store.db import make_engine
from omnijobs.store.jobs import JobStore
url, branch, pipelines, start_at, run_ids = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:]
store = JobStore(make_engine(url), load_registry(pipelines))
time.sleep(max(0.0, start_at - time.time()))
made = []
for run_id in run_ids:
    (claim,) = store.claim([(run_id, 0)], branch, branch, 30)
    made += [t.run_id for t in store.complete(claim, {"text": branch})]
print(json.dumps(made))
"""


def _sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'omnijobs.db'}"
    upgrade(url)
    return url


def test_migrations_on_sqlite_give_the_tables(tmp_path):
    engine = make_engine(_sqlite(tmp_path))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    assert diff == []
    assert mode == "wal"


def test_fan_in_is_decided_once_when_two_processes_finish_the_branches_together(tmp_path):
    """Both branches of each diamond end at the same moment in two processes: exactly one of the two
    completions queues the join. On SQLite the write lock taken at BEGIN IMMEDIATE serialises them
    (a deferred transaction would fail with "database is locked" when upgrading its read lock)."""
    import time

    url = _sqlite(tmp_path)
    store = JobStore(make_engine(url), load_registry(str(FIXTURE_PIPELINES)))
    spec = store.pipelines.get("diamond")
    branches: dict[str, list[str]] = {"left": [], "right": []}
    for i in range(JOBS):
        _, (root,), _ = store.create_job(spec, {"prompt": f"p{i}"}, {})
        (claim,) = store.claim([(root.run_id, root.attempt)], "w", "b", 30)
        for task in store.complete(claim, {"text": "r"}):
            branches["left" if ".left" in task.queue else "right"].append(task.run_id)
    assert len(branches["left"]) == len(branches["right"]) == JOBS

    start_at = time.time() + 2.5  # both processes begin together, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", _BRANCH, url, name, str(FIXTURE_PIPELINES), str(start_at), *ids],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, ids in branches.items()]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    joins = [run_id for out, _ in outs for run_id in json.loads(out)]
    assert len(joins) == len(set(joins)) == JOBS  # one join per job, never two, never none


def test_reconciler_republishes_through_the_file_broker(tmp_path):
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    settings = Settings(database_url=_sqlite(tmp_path), broker_url="filesystem://", broker_dir=tmp_path / "broker",
                        pipelines_path=str(FIXTURE_PIPELINES))
    store = JobStore(make_engine(settings.database_url), load_registry(settings.pipelines_path))
    _, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "x"}, {})  # its message "lost"

    app = make_celery(settings)
    report = sweep(store, CeleryPublisher(app), requeue_after_s=0)
    assert report.republished == 1
    assert list((tmp_path / "broker" / "queue").glob(f"*.{task.queue}.msg"))

    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(task.queue)
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.headers["task"] == STAGE_TASK
    run_id, attempt = message.payload[0]
    assert (run_id, attempt) == (task.run_id, task.attempt)
    assert len(store.claim([(run_id, attempt)], "w", "b", 30)) == 1
