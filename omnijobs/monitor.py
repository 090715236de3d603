"""The operators' view of the stage queues: broker depth, Postgres backlog, workers, all per stage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from omnijobs.admission import Admission
from omnijobs.pipelines import PipelineRegistry
from omnijobs.store.stats import MonitorQueries
from omnijobs.store.workers import WorkerView


def queue_overview(registry: PipelineRegistry, admission: Admission, queries: MonitorQueries,
                   workers: list[WorkerView]) -> list[dict[str, Any]]:
    """One entry per stage of every loaded pipeline.

    `depth` counts the messages waiting in the broker (all priority lists); `queued` and `running`
    count stage runs in Postgres. They differ while messages are prefetched by a worker, delayed
    for a retry backoff, or lost and not yet re-published.
    """
    now = datetime.now(UTC)
    stages = [(spec, name) for spec in registry.all() for name in spec.stages]
    queues = [spec.queue(name) for spec, name in stages]
    by_priority = admission.depths.by_priority(queues) if admission.depths else {}
    runs = queries.open_runs()
    out = []
    for (spec, name), queue in zip(stages, queues, strict=True):
        ref = f"{spec.name}.{name}"
        open_runs = runs.get(queue, {})
        oldest = open_runs.get("oldest_queued_at")
        steps = by_priority.get(queue)
        consumers = [w for w in workers if w.queue == queue and w.alive]
        out.append({
            "stage": ref,
            "pipeline": spec.name,
            "queue": queue,
            "depth": sum(steps.values()) if steps is not None else None,
            # Keyed by the job's priority (9 = most urgent); the broker orders its lists the other way.
            "depth_by_priority": {str(9 - step): n for step, n in sorted(steps.items())} if steps else {},
            "bound": admission.bound(ref) or None,
            "queued": open_runs.get("queued", 0),
            "running": open_runs.get("running", 0),
            "oldest_wait_s": round((now - oldest).total_seconds(), 3) if oldest else None,
            "workers": len(consumers),
            "worker_names": [w.name for w in consumers],
        })
    return out
