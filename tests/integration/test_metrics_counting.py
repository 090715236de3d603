"""Counters shared by the processes of a host (prometheus multiprocess mode), and queue depth
counted from the file-system broker's folder, with real processes and the real transport."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.cluster import REPO

RECORD = """
from omnijobs.metrics import record_batch
record_batch("chat.generate", batch_size=4, run_s=0.5, queue_waits_s=[0.1, 0.2, 0.3, 0.4], succeeded=3, failed=1,
             tokens=40)
"""
SCRAPE = """
from prometheus_client import generate_latest
from omnijobs.metrics import registry
print(generate_latest(registry()).decode())
"""


def _run(code: str, metrics_dir) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True,
                          text=True, timeout=120).stdout


def _value(text: str, line_start: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_two_worker_processes_add_up_in_a_third(tmp_path):
    for _ in range(2):  # two "workers", each one batch, then gone
        _run(RECORD, tmp_path)
    text = _run(SCRAPE, tmp_path)
    assert _value(text, 'omnijobs_batch_size_count{stage="chat.generate"}') == 2
    assert _value(text, 'omnijobs_batch_size_sum{stage="chat.generate"}') == 8
    assert _value(text, 'omnijobs_stage_run_seconds_count{stage="chat.generate"}') == 8
    assert _value(text, 'omnijobs_stage_queue_wait_seconds_bucket{le="0.25",stage="chat.generate"}') == 4
    assert _value(text, 'omnijobs_stage_runs_finished_total{outcome="succeeded",stage="chat.generate"}') == 6
    assert _value(text, 'omnijobs_stage_runs_finished_total{outcome="failed",stage="chat.generate"}') == 2
    assert _value(text, 'omnijobs_stage_tokens_total{stage="chat.generate"}') == 80
    assert _value(text, 'omnijobs_stage_engine_seconds_total{stage="chat.generate"}') == 1.0


def test_folder_depth_counts_what_the_transport_published(tmp_path):
    from omnijobs.fs_depths import FolderQueueDepths
    from omnijobs.messages import StageTask
    from omnijobs.settings import Settings
    from workers.celery_app import make_celery
    from workers.publisher import CeleryPublisher

    settings = Settings(broker_url="filesystem://", broker_dir=tmp_path)
    publisher = CeleryPublisher(make_celery(settings))
    publisher.publish([StageTask(f"run-{i}", 0, "omni.chat.generate", 0) for i in range(3)]
                      + [StageTask("run-x", 0, "omni.qwen_image.denoise", 5)])
    depths = FolderQueueDepths(tmp_path)
    queues = ["omni.chat.generate", "omni.qwen_image.denoise", "omni.idle.stage"]
    assert depths.totals(queues) == {"omni.chat.generate": 3, "omni.qwen_image.denoise": 1, "omni.idle.stage": 0}
    assert depths.by_priority(queues)["omni.chat.generate"] == {0: 3}
    assert depths.by_priority(queues)["omni.idle.stage"] == {}
