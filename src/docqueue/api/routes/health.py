"""`/healthz` (the process answers), `/readyz` (it can do its work) and Prometheus `/metrics`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from docqueue.api.deps import MetricsDep, SettingsDep, StorageDep, StoreDep, WorkersDep
from docqueue.api.problems import NOT_READY, ProblemError, problem_responses
from docqueue.api.schemas import HealthOut
from docqueue.settings import Settings
from docqueue.store import WorkerRegistry

log = logging.getLogger("docqueue.api")
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> HealthOut:
    """The process is up and answering."""
    return HealthOut(status="ok")


@router.get("/readyz", responses=problem_responses(503))
def readyz(
    store: StoreDep, storage: StorageDep, workers: WorkersDep, settings: SettingsDep
) -> HealthOut:
    """The job store answers, storage takes writes, and a worker was heard from lately; else 503."""
    checks = {
        "store": _check(lambda: store.list_jobs(limit=1)),
        "storage": _check(storage.check_writable),
        "workers": _check(lambda: _worker_heard(workers, settings)),
    }
    failing = {name: result for name, result in checks.items() if result != "ok"}
    if failing:
        raise ProblemError(
            NOT_READY,
            "; ".join(f"{name}: {result}" for name, result in failing.items()),
            checks=checks,
        )
    return HealthOut(status="ready", checks=checks)


def _check(probe: Callable[[], object]) -> str:
    """`ok`, or what went wrong."""
    try:
        probe()
    except Exception as exc:
        log.warning("readiness check failed: %s", exc)
        return str(exc) or type(exc).__name__
    return "ok"


def _worker_heard(workers: WorkerRegistry, settings: Settings) -> None:
    """Raise unless a worker was heard from within `ready_worker_seconds` (0 skips the check)."""
    window = settings.ready_worker_seconds
    if window and not workers.list(alive_within=timedelta(seconds=window)):
        raise LookupError(
            f"no worker heard from in the last {window:g} s; start one with `docqueue worker`"
        )


@router.get("/metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests by route, jobs submitted by operation, queue depth."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
