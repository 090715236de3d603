"""/metrics: Prometheus text (admin keys only).

Two sources. Gauges of the current state (queue depth, open runs, jobs, workers, webhook
deliveries) are read from the store and the broker at scrape time: every replica answers the same.
Counters and histograms of what happened (stage run and queue-wait times, batch sizes, tokens and
steps, HTTP requests) are kept by the processes as it happens (omnijobs.metrics): with
PROMETHEUS_MULTIPROC_DIR, those of every process of this host. Until a worker has reported a
stage histogram here, that histogram is computed from the store as before.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.auth import require_admin
from api.schemas import ErrorResponse
from omnijobs import metrics as counted
from omnijobs.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_admin)])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorResponse},
                       403: {"model": ErrorResponse}})
def metrics(request: Request) -> Response:
    counted_families = [fam for fam in counted.registry().collect() if fam.samples]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(counted_families))
    registry.register(_Collector(request.app.state, skip={fam.name for fam in counted_families}))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Families:
    """Already collected metric families, served as they are."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def _stage(queue: str) -> str:
    return queue.removeprefix("omni.")


class _Collector:
    def __init__(self, state, skip: set[str] = frozenset()):
        self.state = state
        self.skip = skip  # histograms the processes counted themselves: no store scan for those

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

        yield from self._store_histograms(queries)

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

    def _store_histograms(self, queries):
        """The stage histograms no process reported, from a scan of the store (the fallback)."""
        wanted = [m for m in ("omnijobs_stage_run_seconds", "omnijobs_stage_queue_wait_seconds") if m not in self.skip]
        if wanted:
            hists = queries.duration_histograms(LATENCY_BUCKETS)
            for metric in wanted:
                name, help_text = (("run_s", "Time a stage run spent running") if metric == "omnijobs_stage_run_seconds"
                                   else ("queue_wait_s", "Time a stage run waited in its queue"))
                fam = HistogramMetricFamily(metric, help_text, labels=["stage"])
                for queue, (cumulative, total, count) in hists[name].items():
                    buckets = [(str(b), c) for b, c in zip(LATENCY_BUCKETS, cumulative, strict=True)]
                    fam.add_metric([_stage(queue)], [*buckets, ("+Inf", count)], total)
                yield fam
        if "omnijobs_batch_size" not in self.skip:
            fam = HistogramMetricFamily("omnijobs_batch_size", "Stage runs per engine batch", labels=["stage"])
            for queue, sizes in queries.batch_size_counts().items():
                buckets = [(str(b), sum(n for s, n in sizes.items() if s <= b)) for b in BATCH_BUCKETS]
                fam.add_metric([_stage(queue)], [*buckets, ("+Inf", sum(sizes.values()))],
                               sum(s * n for s, n in sizes.items()))
            yield fam
