"""What endpoints depend on, as `Annotated` aliases; everything comes from the app's state.

The getters are `async def` although they never wait: FastAPI runs a plain `def` dependency on
its thread pool, a hop that costs more than the getter itself, on every request.
"""

from __future__ import annotations

from typing import Annotated, cast
from uuid import UUID

from fastapi import Depends, Path, Query, Request

from docqueue.api.longpoll import EventFeed, FinishWatch
from docqueue.api.metrics import Metrics
from docqueue.processors import Registry
from docqueue.service import DocumentQueueService
from docqueue.settings import Settings
from docqueue.storage import Storage
from docqueue.store import JobStore, WorkerRegistry


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    return cast(Settings, request.app.state.settings)


def _service(request: Request) -> DocumentQueueService:
    """The one queue service of the app."""
    return cast(DocumentQueueService, request.app.state.service)


async def get_service(request: Request) -> DocumentQueueService:
    """The one queue service of the app."""
    return _service(request)


async def get_store(request: Request) -> JobStore:
    """The job store."""
    return _service(request).store


async def get_storage(request: Request) -> Storage:
    """The file storage."""
    return _service(request).storage


async def get_registry(request: Request) -> Registry:
    """The processors this installation knows."""
    return _service(request).registry


async def get_workers(request: Request) -> WorkerRegistry:
    """The registry of worker processes."""
    return cast(WorkerRegistry, request.app.state.workers)


async def get_metrics(request: Request) -> Metrics:
    """The app's Prometheus metrics."""
    return cast(Metrics, request.app.state.metrics)


async def get_finish_watch(request: Request) -> FinishWatch:
    """The app's long-poll waiter."""
    return cast(FinishWatch, request.app.state.finish_watch)


async def get_event_feed(request: Request) -> EventFeed:
    """The app's reader for event streams."""
    return cast(EventFeed, request.app.state.event_feed)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[DocumentQueueService, Depends(get_service)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
WorkersDep = Annotated[WorkerRegistry, Depends(get_workers)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

JobId = Annotated[UUID, Path(description="The job's id (a UUIDv7).")]
Wait = Annotated[
    float,
    Query(
        ge=0,
        description="Seconds to wait for the job to finish before answering "
        "(long-poll; cut to the server's `max_wait_seconds`).",
    ),
]
FinishWatchDep = Annotated[FinishWatch, Depends(get_finish_watch)]
EventFeedDep = Annotated[EventFeed, Depends(get_event_feed)]
