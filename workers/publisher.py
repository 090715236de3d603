"""Publishing stage tasks: Celery's message format, sent with one producer for a whole batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from celery import Celery

from omnijobs.messages import STAGE_TASK, StageTask

RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}


class CeleryPublisher:
    def __init__(self, app: Celery):
        self.app = app

    def publish(self, tasks: Sequence[StageTask]) -> None:
        # NOTE: the message is built and sent through Celery's AMQP layer directly; `send_task`
        # also resolves a result backend per thread, which cost more than the rest of a submit.
        amqp = self.app.amqp
        with self.app.producer_or_acquire() as producer:
            for task in tasks:
                message = amqp.create_task_message(
                    str(uuid.uuid4()), STAGE_TASK, task.args(), {}, countdown=task.delay_s or None,
                    ignore_result=True,
                )
                amqp.send_task_message(
                    producer, STAGE_TASK, message, queue=task.queue, routing_key=task.queue,
                    # Redis serves priority 0 first; jobs say 9 = most urgent.
                    priority=9 - max(0, min(9, task.priority)),
                    retry=True, retry_policy=RETRY_POLICY,
                )
