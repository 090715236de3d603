"""Publishing stage tasks through Celery."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from omnijobs.messages import STAGE_TASK, StageTask


class CeleryPublisher:
    def __init__(self, app: Celery):
        self.app = app

    def publish(self, tasks: Sequence[StageTask]) -> None:
        with self.app.producer_or_acquire() as producer:
            for task in tasks:
                self.app.send_task(
                    STAGE_TASK,
                    args=task.args(),
                    queue=task.queue,
                    routing_key=task.queue,
                    # Redis serves priority 0 first; jobs say 9 = most urgent.
                    priority=9 - max(0, min(9, task.priority)),
                    countdown=task.delay_s or None,
                    producer=producer,
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                )
