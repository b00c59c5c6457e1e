"""`/v1/workers`: the worker processes and when each was last heard from."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from docqueue.api.deps import SettingsDep, WorkersDep
from docqueue.api.schemas import WorkerListOut, WorkerOut

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("")
def list_workers(
    workers: WorkersDep,
    settings: SettingsDep,
    alive: Annotated[
        bool, Query(description="Only workers running and heard from lately.")
    ] = False,
) -> WorkerListOut:
    """Known workers, newest first; `alive` marks those heard from within the readiness window."""
    window = timedelta(seconds=settings.ready_worker_seconds or settings.lease_seconds * 2)
    living = {w.id for w in workers.list(alive_within=window)}
    known = [w for w in workers.list() if w.id in living or not alive]
    return WorkerListOut(items=[WorkerOut.of(w, w.id in living) for w in known])
