"""The Celery app shared by the API (to publish) and the stage workers (to consume)."""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from omnijobs.settings import Settings


def make_celery(settings: Settings, prefetch: int = 1) -> Celery:
    app = Celery("omnijobs", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # JSON only: no pickle on the wire.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # Ack after the batch ran; a worker killed mid-batch leaves its messages to be redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A batch can only be as large as the messages a worker holds unacknowledged.
        worker_prefetch_multiplier=prefetch,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redelivery of unacked messages; longer than any stage, or long stages run twice.
            "visibility_timeout": settings.visibility_timeout_s,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        },
        task_default_priority=0,
        task_create_missing_queues=True,
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
    if settings.broker_url.startswith("filesystem://"):
        from workers.fs_broker import TRANSPORT

        app.conf.broker_transport = TRANSPORT
        app.conf.broker_transport_options = filesystem_transport_options(settings.broker_dir)
    return app


def filesystem_transport_options(folder: Path) -> dict:
    """kombu's file-system transport: every process of one machine shares one folder of messages."""
    root = Path(folder)
    queue, processed, control = root / "queue", root / "processed", root / "control"
    for path in (queue, processed, control):
        path.mkdir(parents=True, exist_ok=True)
    return {
        # Producers write where consumers read: one folder for both directions.
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        # Kept, so a message is taken by a rename inside one file system: atomic, one consumer wins.
        "store_processed": True,
        "processed_folder": str(processed),
        "control_folder": str(control),
        # The transport polls the folder; the default 1 s would add a second to every stage hop.
        "polling_interval": 0.05,
    }
