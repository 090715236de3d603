"""The queue side: the Celery app and the stage worker entrypoint."""
