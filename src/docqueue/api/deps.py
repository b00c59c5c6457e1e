"""What endpoints depend on, as `Annotated` aliases; everything comes from the app's state."""

from __future__ import annotations

from typing import Annotated, cast
from uuid import UUID

from fastapi import Depends, Path, Query, Request

from docqueue.api.metrics import Metrics
from docqueue.processors import Registry
from docqueue.service import DocumentQueueService
from docqueue.settings import Settings
from docqueue.storage import Storage
from docqueue.store import JobStore, WorkerRegistry


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    return cast(Settings, request.app.state.settings)


def get_service(request: Request) -> DocumentQueueService:
    """The one queue service of the app."""
    return cast(DocumentQueueService, request.app.state.service)


def get_store(request: Request) -> JobStore:
    """The job store."""
    return get_service(request).store


def get_storage(request: Request) -> Storage:
    """The file storage."""
    return get_service(request).storage


def get_registry(request: Request) -> Registry:
    """The processors this installation knows."""
    return get_service(request).registry


def get_workers(request: Request) -> WorkerRegistry:
    """The registry of worker processes."""
    return cast(WorkerRegistry, request.app.state.workers)


def get_metrics(request: Request) -> Metrics:
    """The app's Prometheus metrics."""
    return cast(Metrics, request.app.state.metrics)


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
