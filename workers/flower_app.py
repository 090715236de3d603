"""The Celery app Flower runs with: `celery -A workers.flower_app flower`.

The project's app (broker, transport options: Flower then counts every priority list of a queue)
with every stage queue of the loaded pipelines declared, and the webhook queue: with no Celery
worker answering `inspect`, Flower lists the declared queues, and shows each one's depth.
"""

from __future__ import annotations

from kombu import Queue

from omnijobs.pipelines import load_registry
from omnijobs.settings import get_settings
from omnijobs.webhooks.relay import WEBHOOK_QUEUE
from workers.celery_app import make_celery


def make_flower_app():
    settings = get_settings()
    app = make_celery(settings)
    stage_queues = [spec.queue(name) for spec in load_registry(settings.pipelines_path).all() for name in spec.stages]
    app.conf.task_queues = [Queue(name) for name in [*stage_queues, WEBHOOK_QUEUE]]
    # Flower lists the default queue too: make it a real one, not a `celery` queue nobody uses.
    app.conf.task_default_queue = stage_queues[0] if stage_queues else WEBHOOK_QUEUE
    return app


app = make_flower_app()
