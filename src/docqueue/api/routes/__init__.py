"""One router per resource: jobs, their artifacts and events, the queue, workers, health."""

from __future__ import annotations

from fastapi import APIRouter

from docqueue.api.routes import artifacts, events, health, jobs, queue, workers

ROUTERS: tuple[APIRouter, ...] = (
    jobs.router,
    artifacts.router,
    events.router,
    queue.router,
    workers.router,
    health.router,
)
