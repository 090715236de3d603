"""The store's conditional updates against the real Postgres, and the runner driven in-process."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from omnijobs.engines.base import EngineContext
from omnijobs.errors import Conflict
from omnijobs.reconciler import sweep
from omnijobs.runner import StageRunner
from omnijobs.store.jobs import utcnow
from omnijobs.store.tables import Job, StageRun
from tests.fixtures.engines import EchoEngine


class Collect:
    """A publisher that keeps what it was given (the broker is tested end to end elsewhere)."""

    def __init__(self):
        self.tasks = []

    def publish(self, tasks):
        self.tasks.extend(tasks)


def runner_for(store, pipeline: str, stage: str, publisher, lease_s: float = 30.0) -> StageRunner:
    spec = store.pipelines.get(pipeline)
    engine = EchoEngine(EngineContext(stage=spec.stage(stage), device="cpu", model_path=None))
    engine.load()
    return StageRunner(spec, stage, engine, store, publisher, f"test-{stage}", lease_s=lease_s)


def drain(store, publisher: Collect, runners: dict[str, StageRunner]) -> None:
    while publisher.tasks:
        tasks, publisher.tasks = publisher.tasks, []
        by_queue = {}
        for t in tasks:
            by_queue.setdefault(t.queue, []).append((t.run_id, t.attempt))
        for queue, messages in by_queue.items():
            runners[queue.split(".")[-1]].run_batch(messages)


def test_claim_is_once_per_attempt(store):
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "x"}, {})
    first = store.claim([(task.run_id, task.attempt)], "w1", "b1", 30)
    again = store.claim([(task.run_id, task.attempt)], "w2", "b2", 30)
    assert len(first) == 1 and again == []
    view = store.get_job(job.id)
    assert view.status == "running" and view.stages[0].worker == "w1" and view.stages[0].batch_size == 1
    assert store.complete(first[0], {"text": "done"}) == []
    assert store.complete(first[0], {"text": "second write"}) == []  # recorded once
    assert store.get_job(job.id).outputs == {"text": "done"}


def test_fan_out_and_fan_in_through_the_runner(store):
    publisher = Collect()
    spec = store.pipelines.get("diamond")
    job, tasks, _ = store.create_job(spec, {"prompt": "p"}, {})
    publisher.publish(tasks)
    runners = {name: runner_for(store, "diamond", name, publisher) for name in spec.stages}
    drain(store, publisher, runners)
    view = store.get_job(job.id)
    assert view.status == "succeeded"
    assert view.outputs == {"left": "left(root(p))", "text": "join(left(root(p))|right(root(p)))"}
    stages = {r.stage: r for r in view.stages}
    assert stages["join"].started_at >= max(stages["left"].finished_at, stages["right"].finished_at)


def test_failure_in_one_branch_fails_job_and_cancels_the_rest(store):
    publisher = Collect()
    spec = store.pipelines.get("diamond")
    job, tasks, _ = store.create_job(spec, {"prompt": "fatal"}, {})
    publisher.publish(tasks)
    drain(store, publisher, {name: runner_for(store, "diamond", name, publisher) for name in spec.stages})
    view = store.get_job(job.id)
    assert view.status == "failed" and view.error["stage"] == "root" and view.error["code"] == "fatal"
    assert {r.stage: r.status for r in view.stages} == {
        "root": "failed", "left": "canceled", "right": "canceled", "join": "canceled"}


def test_canceled_run_result_is_not_recorded(store):
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "x"}, {})
    (claim,) = store.claim([(task.run_id, task.attempt)], "w1", "b1", 30)
    store.cancel(job.id)
    assert store.complete(claim, {"text": "late"}) == []
    view = store.get_job(job.id)
    assert view.status == "canceled" and view.outputs is None and view.stages[0].status == "canceled"
    with pytest.raises(Conflict):
        store.cancel(job.id)


def test_reconciler_requeues_expired_lease_then_fails_after_max_attempts(store):
    publisher = Collect()
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "x"}, {})
    store.mark_enqueued([task])
    for attempt in (1, 2):  # echo has max_attempts 2: the worker "dies" twice
        claims = store.claim([(task.run_id, attempt - 1)], f"dead{attempt}", "b", lease_s=0.01)
        assert len(claims) == 1
        _expire(store, task.run_id)
        report = sweep(store, publisher, requeue_after_s=3600)
        assert report.expired == 1
    view = store.get_job(job.id)
    assert view.status == "failed" and view.stages[0].attempt == 2
    assert [e["code"] for e in view.stages[0].errors] == ["lease_expired", "lease_expired"]
    assert [t.attempt for t in publisher.tasks] == [1]  # requeued once, then failed


def test_reconciler_republishes_lost_messages(store):
    publisher = Collect()
    job, (task,), _ = store.create_job(store.pipelines.get("echo"), {"prompt": "lost"}, {})
    # Marked published in its commit but never published (as if the API died right after the
    # commit): the sweep finds it once the mark is stale.
    fresh = Collect()
    sweep(store, fresh, requeue_after_s=3600)
    assert task.run_id not in {t.run_id for t in fresh.tasks}
    with store._sessions.begin() as s:
        s.execute(update(StageRun).where(StageRun.id == uuid.UUID(task.run_id))
                  .values(updated_at=utcnow() - timedelta(seconds=60), enqueued_at=utcnow() - timedelta(seconds=60)))
    sweep(store, publisher, requeue_after_s=30)
    assert task.run_id in {t.run_id for t in publisher.tasks}
    runner = runner_for(store, "echo", "say", publisher)
    runner.run_batch([(t.run_id, t.attempt) for t in publisher.tasks if t.run_id == task.run_id] * 2)
    assert store.get_job(job.id).status == "succeeded"


def test_idempotency_key_same_body_same_job_other_body_conflict(store, settings):
    from omnijobs.submit import submit

    kwargs = dict(pipeline="echo", inputs={"prompt": "idem"}, idempotency_key=f"k-{uuid.uuid4()}")
    first, created = submit(store, store.pipelines, Collect(), **kwargs)
    second, created_again = submit(store, store.pipelines, Collect(), **kwargs)
    assert created and not created_again and first.id == second.id
    with pytest.raises(Conflict):
        submit(store, store.pipelines, Collect(), **{**kwargs, "inputs": {"prompt": "other"}})
    with store._sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.idempotency_key == kwargs["idempotency_key"])) == 1


def _expire(store, run_id: str) -> None:
    with store._sessions.begin() as s:
        s.execute(update(StageRun).where(StageRun.id == uuid.UUID(run_id))
                  .values(lease_until=utcnow() - timedelta(seconds=1)))


def test_a_streamed_stage_is_queued_when_its_upstream_is_claimed(store):
    job, (task,), _ = store.create_job(store.pipelines.get("streamed"), {"prompt": "s"}, {})
    (claim,), side = store.claim_batch([(task.run_id, task.attempt)], "w1", "b1", 30)
    assert [t.queue for t in side] == ["omni.streamed.b"]
    view = store.get_job(job.id)
    assert {s.stage: s.status for s in view.stages} == {"a": "running", "b": "queued"}
    (down,), _ = store.claim_batch([(side[0].run_id, side[0].attempt)], "w2", "b2", 30)
    assert down.inputs == {"prompt": None}  # read from the stream, not from a recorded output
    assert store.complete(down, {"text": "from chunks"}) == []
    assert store.get_job(job.id).status == "running"  # the upstream's result is still owed
    assert store.complete(claim, {"text": "s"}) == []
    done = store.get_job(job.id)
    assert done.status == "succeeded" and done.outputs == {"text": "from chunks"}
