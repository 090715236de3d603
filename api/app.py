"""The FastAPI application. Never imports torch."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api import auth, docs, errors, openai
from api.http_metrics import RequestMetrics
from api.limits import BodySizeLimit
from api.routes import (
    admin,
    deliveries,
    files,
    health,
    jobs,
    metrics,
    outputs,
    pipelines,
)
from omnijobs import __version__
from omnijobs.admission import Admission, redis_for
from omnijobs.artifacts.factory import make_connector
from omnijobs.artifacts.values import StageValues
from omnijobs.fs_depths import FolderQueueDepths
from omnijobs.inputs import MediaInputs
from omnijobs.pipelines import load_registry
from omnijobs.settings import Settings, get_settings
from omnijobs.store.db import make_engine
from omnijobs.store.files import FileStore
from omnijobs.store.jobs import JobStore
from omnijobs.store.keys import KeyStore
from omnijobs.store.stats import MonitorQueries, StatsStore
from omnijobs.store.workers import WorkerRegistry
from omnijobs.streaming import ChannelConfig, JobFollower
from workers.celery_app import make_celery
from workers.publisher import CeleryPublisher


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Every route needs an API key; auth.authenticate lets only the health routes through without one.
    app = FastAPI(title="OmniJobs", version=__version__, description="Durable jobs for any-to-any models.",
                  dependencies=[Depends(auth.authenticate)], responses=auth.RESPONSES,
                  docs_url=None, redoc_url=None)  # served by api.docs from packaged assets, not a CDN
    docs.install(app)
    registry = load_registry(settings.pipelines_path)
    celery = make_celery(settings)
    app.state.settings = settings
    app.state.registry = registry
    app.state.store = JobStore(make_engine(settings.database_url), registry)
    app.state.celery = celery
    app.state.publisher = CeleryPublisher(celery)
    app.state.values = StageValues(settings)
    app.state.media = MediaInputs(settings, FileStore(app.state.store.engine), make_connector(settings))
    engine = app.state.store.engine
    app.state.keys = KeyStore(engine)
    app.state.admission = Admission(settings, redis_for(settings.broker_url))
    if settings.broker_url.startswith("filesystem://"):  # no Redis lists: count the broker folder's messages
        app.state.admission.depths = FolderQueueDepths(settings.broker_dir)
    app.state.workers = WorkerRegistry(engine)
    app.state.stats = StatsStore(engine)
    app.state.monitor = MonitorQueries(engine)
    app.state.follower = JobFollower(app.state.store, ChannelConfig.from_settings(settings), settings.events_poll_s)
    errors.install(app)
    auth.install(app)
    for module in (admin, metrics):
        app.include_router(module.router)
    for module in (health, jobs, outputs, pipelines, deliveries, files):
        app.include_router(module.router)
    app.include_router(openai.router)  # OpenAI-compatible routes, errors in OpenAI's shape
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, exempt=("/v1/files",))
    app.add_middleware(RequestMetrics)
    return app
