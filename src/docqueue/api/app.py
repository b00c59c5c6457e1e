"""`create_app(settings)`: the HTTP API, built by a factory with everything it needs on app.state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from docqueue.api.longpoll import EventFeed, FinishWatch
from docqueue.api.metrics import Metrics
from docqueue.api.middleware import LimitBody, ObserveRequests
from docqueue.api.problems import install_problem_handlers
from docqueue.api.routes import ROUTERS
from docqueue.heap import startup_objects_frozen
from docqueue.logs import configure_logging
from docqueue.service import DocumentQueueService
from docqueue.settings import Settings
from docqueue.store import WorkerRegistry


def create_app(settings: Settings, *, service: DocumentQueueService | None = None) -> FastAPI:
    """The API on the store and storage that `settings` name (migrated to the newest schema)."""
    service = service or DocumentQueueService(settings)
    metrics = Metrics(service.store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Long-polls and uploads hold a thread each; the default 40 would cap them too soon.
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        with startup_objects_frozen():
            yield
        service.store.engine.dispose()

    app = FastAPI(
        title="docqueue",
        summary="A durable job service for document work.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.workers = WorkerRegistry(service.store.engine)
    app.state.metrics = metrics
    app.state.finish_watch = FinishWatch(service.store)
    app.state.event_feed = EventFeed(service.store)
    for router in ROUTERS:
        app.include_router(router)
    install_problem_handlers(app)
    app.add_middleware(LimitBody, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ObserveRequests, metrics=metrics)
    return app


def app_from_environment() -> FastAPI:
    """For `uvicorn --factory docqueue.api.app:app_from_environment`: settings from DOCQUEUE_*."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)
