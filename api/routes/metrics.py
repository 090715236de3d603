"""/metrics: Prometheus text, read from Postgres and the broker at scrape time (admin keys only).

Every API replica answers the same figures: they come from the shared store, not process memory.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.auth import require_admin
from api.schemas import ErrorResponse

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_admin)])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorResponse},
                       403: {"model": ErrorResponse}})
def metrics(request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(request.app.state))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _stage(queue: str) -> str:
    return queue.removeprefix("omni.")


class _Collector:
    def __init__(self, state):
        self.state = state

    def collect(self):
        state = self.state
        queries = state.monitor
        queues = [spec.queue(name) for spec in state.registry.all() for name in spec.stages]

        if state.admission.depths is not None:
            depth = GaugeMetricFamily("omnijobs_queue_depth", "Messages waiting in a stage queue", labels=["stage"])
            for queue, n in state.admission.depths.totals(queues).items():
                depth.add_metric([_stage(queue)], n)
            yield depth

        runs = GaugeMetricFamily("omnijobs_stage_runs", "Stage runs queued or running", labels=["stage", "status"])
        for queue, counts in queries.open_runs().items():
            for status in ("queued", "running"):
                runs.add_metric([_stage(queue), status], counts[status])
        yield runs

        jobs = GaugeMetricFamily("omnijobs_jobs", "Jobs by pipeline and status", labels=["pipeline", "status"])
        for pipeline, status, n in queries.jobs_by_status():
            jobs.add_metric([pipeline, status], n)
        yield jobs

        hists = queries.duration_histograms(LATENCY_BUCKETS)
        for name, help_text in (("run_s", "Time a stage run spent running"),
                                ("queue_wait_s", "Time a stage run waited in its queue")):
            metric = "omnijobs_stage_run_seconds" if name == "run_s" else "omnijobs_stage_queue_wait_seconds"
            fam = HistogramMetricFamily(metric, help_text, labels=["stage"])
            for queue, (cumulative, total, count) in hists[name].items():
                buckets = [(str(b), c) for b, c in zip(LATENCY_BUCKETS, cumulative, strict=True)]
                fam.add_metric([_stage(queue)], [*buckets, ("+Inf", count)], total)
            yield fam

        fam = HistogramMetricFamily("omnijobs_batch_size", "Stage runs per engine batch", labels=["stage"])
        for queue, sizes in queries.batch_size_counts().items():
            buckets = [(str(b), sum(n for s, n in sizes.items() if s <= b)) for b in BATCH_BUCKETS]
            fam.add_metric([_stage(queue)], [*buckets, ("+Inf", sum(sizes.values()))],
                           sum(s * n for s, n in sizes.items()))
        yield fam

        up = GaugeMetricFamily("omnijobs_worker_up", "1 while a stage worker heartbeats, else 0",
                               labels=["worker", "stage", "host", "device"])
        last = GaugeMetricFamily("omnijobs_worker_heartbeat_age_seconds", "Seconds since a worker's last heartbeat",
                                 labels=["worker", "stage"])
        now = datetime.now(UTC)
        for w in state.workers.list(state.settings.worker_dead_after_s):
            up.add_metric([w.name, w.stage, w.host, w.device], 1 if w.alive else 0)
            last.add_metric([w.name, w.stage], round((now - w.last_heartbeat).total_seconds(), 3))
        yield up
        yield last

        deliveries = queries.webhook_deliveries()
        if deliveries is not None:
            fam = GaugeMetricFamily("omnijobs_webhook_deliveries", "Webhook deliveries by status", labels=["status"])
            for status, n in deliveries:
                fam.add_metric([status], n)
            yield fam
