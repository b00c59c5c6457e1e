"""`/v1/queue`: the queue's numbers, and the cron trigger that processes due jobs in the API."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query
from pydantic import SecretStr

from docqueue.api.deps import ServiceDep, SettingsDep, StoreDep
from docqueue.api.problems import FORBIDDEN, ProblemError, problem_responses
from docqueue.api.schemas import ProcessOut, QueueStatsOut

log = logging.getLogger("docqueue.api")
router = APIRouter(prefix="/v1/queue", tags=["queue"])

SECRET_HEADER = "X-Docqueue-Secret"


@router.get("/stats")
def queue_stats(store: StoreDep) -> QueueStatsOut:
    """Jobs per state and queue, the age of the oldest queued job, jobs finished in the last minute."""
    return QueueStatsOut.of(store.stats())


@router.post("/process", responses=problem_responses(403, 422))
def process_queue(
    service: ServiceDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most jobs to run.")] = 10,
    secret: Annotated[
        str | None, Header(alias=SECRET_HEADER, description="The configured process secret.")
    ] = None,
) -> ProcessOut:
    """Run up to `limit` due jobs inside the API process, one after the other (for cron).

    Needs the header `X-Docqueue-Secret` equal to the setting `process_secret`; with no secret
    configured the trigger is off and every call gets 403.
    """
    _check_secret(settings.process_secret, secret)
    report = service.process_document_queue(limit)
    log.info(
        "process trigger ran %d jobs: %d completed, %d failed",
        report.processed,
        report.completed,
        report.failed,
    )
    return ProcessOut(processed=report.processed, completed=report.completed, failed=report.failed)


def _check_secret(configured: SecretStr | None, given: str | None) -> None:
    """403 unless a secret is configured and `given` equals it (compared in constant time)."""
    expected = configured.get_secret_value() if configured is not None else ""
    if not expected:
        raise ProblemError(
            FORBIDDEN,
            "the process trigger is off: no process secret is configured "
            "(set DOCQUEUE_PROCESS_SECRET and send it in X-Docqueue-Secret)",
        )
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ProblemError(FORBIDDEN, f"missing or wrong {SECRET_HEADER} header")
