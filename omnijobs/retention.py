"""Retention: a finished job's artifacts are deleted `retention_s` after it ended.

The sweep runs in the reconciler. For each job past retention it deletes every artifact its rows
reference, then everything left under the job's prefix (pieces written by an attempt that died
before recording them), and only then marks the outputs expired. A store that fails leaves the
job unmarked, so the next sweep tries again; deleting twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

from omnijobs.artifacts.factory import connector_for_uri, make_connector
from omnijobs.store.retention import RetentionStore

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    jobs: int = 0
    artifacts: int = 0
    failed: int = 0


def sweep_retention(store: RetentionStore, settings, now: datetime | None = None) -> RetentionReport:
    report = RetentionReport()
    if settings.retention_s <= 0:
        return report
    now = now or datetime.now(UTC)
    for job_id in store.past_retention(now - timedelta(seconds=settings.retention_s), settings.retention_batch):
        try:
            report.artifacts += delete_job_artifacts(store, settings, job_id)
        except Exception:  # one unreachable store must not stop the others' cleanup
            log.exception("retention: could not delete the artifacts of job %s; will try again", job_id)
            report.failed += 1
            continue
        store.mark_expired(job_id, now)
        report.jobs += 1
    if report.jobs or report.failed:
        log.info("retention: %d job(s) expired, %d artifact(s) deleted, %d failed",
                 report.jobs, report.artifacts, report.failed)
    return report


def delete_job_artifacts(store: RetentionStore, settings, job_id) -> int:
    refs = store.artifact_refs(job_id)
    connectors = {}
    for ref in refs:
        uri = ref["artifact"]
        scheme = urlparse(uri).scheme
        if scheme not in connectors:
            connectors[scheme] = connector_for_uri(uri, settings)
        connectors[scheme].delete(uri)
    current = make_connector(settings)
    connectors.setdefault(current.scheme, current)
    swept = sum(c.delete_prefix(str(job_id)) for c in connectors.values())
    return max(len(refs), swept)
