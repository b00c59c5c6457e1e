"""DocumentQueueService: the library face, on a real store, with its original method names."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from docqueue.errors import Conflict, IdempotencyKeyReused, InvalidJob
from docqueue.models import JobState
from docqueue.service import DocumentQueueService
from docqueue.settings import Settings
from docqueue.store.tables import artifacts, job_events, jobs


@pytest.fixture
def service(settings: Settings) -> DocumentQueueService:
    """A service on the fresh store of the test."""
    return DocumentQueueService(settings)


def count_rows(service: DocumentQueueService) -> tuple[int, int, int]:
    """Rows in jobs, job_events and artifacts."""
    with service.store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (jobs, job_events, artifacts)
        )


def test_enqueue_pending_and_manual_completion(service: DocumentQueueService) -> None:
    """enqueue, get_pending_items, mark_in_progress, mark_completed work as their names say."""
    low = service.enqueue(None, "noop", priority="low")
    high = service.enqueue(None, "noop", priority="high")
    assert [j.id for j in service.get_pending_items(10)] == [high.id, low.id]
    started = service.mark_in_progress(high)
    assert started.status == JobState.RUNNING
    done = service.mark_completed(high, {"pages": 3})
    assert done.status == JobState.SUCCEEDED and done.result == {"pages": 3}
    with pytest.raises(Conflict, match="only a queued job can be started"):
        service.mark_in_progress(high.id)


def test_mark_failed_retries_then_dead_letters(service: DocumentQueueService) -> None:
    """mark_failed schedules a retry while attempts remain; permanent fails at once."""
    job = service.enqueue(None, "noop", max_attempts=2)
    service.mark_in_progress(job)
    retried = service.mark_failed(job, "upstream timed out")
    assert retried.status == JobState.SCHEDULED and retried.attempt == 1
    assert retried.error is not None and retried.error["message"] == "upstream timed out"
    service.mark_in_progress(job)  # backoff is 0 in the test settings
    assert service.mark_failed(job, "bad scan", permanent=True).status == JobState.FAILED
    with pytest.raises(Conflict, match="call mark_in_progress first"):
        service.mark_completed(job, {})


def test_process_document_queue_counts(service: DocumentQueueService) -> None:
    """process_document_queue runs due jobs here and counts what happened."""
    service.enqueue(None, "noop", params={"echo": "hi"})
    service.enqueue(None, "noop", params={"fail": "input"})
    service.enqueue(None, "noop", params={"fail": "retryable"})
    report = service.process_document_queue(limit=10)
    assert (report.processed, report.completed, report.failed) == (3, 1, 2)
    stats = service.get_queue_stats()
    assert stats["succeeded"] == 1 and stats["failed"] == 1
    assert stats["queued"] + stats["scheduled"] == 1  # the retryable one waits for its retry


def test_enqueue_a_document_stores_it_once(service: DocumentQueueService, tmp_path: Path) -> None:
    """A document becomes an input artifact; the same bytes are stored under one address."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"same bytes")
    first = service.enqueue(path, "noop")
    second = service.enqueue(b"same bytes", "noop", name="b.bin")
    a, b = service.store.inputs([first.id, second.id]).values()
    assert a[0].sha256 == b[0].sha256 and a[0].name == "a.bin" and b[0].name == "b.bin"
    assert service.storage.exists(a[0].sha256)


@pytest.mark.parametrize(
    ("operation", "params", "message"),
    [
        ("no-such-op", {}, "unknown operation 'no-such-op'; known operations: ingest, noop"),
        ("noop", {"sleep_ms": "soon"}, "invalid params for 'noop': sleep_ms"),
        ("noop", {"surprise": 1}, "invalid params for 'noop': surprise: Extra inputs"),
        ("noop", {"echo": float("nan")}, "cannot be stored as JSON"),
    ],
)
def test_bad_input_is_refused_whole(
    service: DocumentQueueService, operation: str, params: dict[str, object], message: str
) -> None:
    """A bad submission names its problem and leaves nothing in the store."""
    before = count_rows(service)
    with pytest.raises(InvalidJob, match=message.replace("(", r"\(").replace(")", r"\)")):
        service.enqueue(b"%PDF-1.4", operation, params=params)
    assert count_rows(service) == before


def test_a_time_without_a_zone_or_past_the_calendar_is_refused(
    service: DocumentQueueService,
) -> None:
    """run_at must say its time zone (a naive time is ambiguous); a delay past what a date can
    hold is no delay: both are refused whole, naming what to give instead."""
    before = count_rows(service)
    with pytest.raises(InvalidJob, match="has no time zone"):
        service.enqueue(None, "noop", run_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidJob, match="delay"):
        service.enqueue(None, "noop", delay=1e300)
    assert count_rows(service) == before
    later = service.enqueue(None, "noop", run_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert later.status == JobState.SCHEDULED


def test_a_refused_document_is_not_kept(service: DocumentQueueService) -> None:
    """A document whose job is refused after it was stored (its key names another request)
    leaves no bytes behind; the bytes of the job that was made stay."""
    first = service.enqueue(b"first document", "noop", idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused):
        service.enqueue(b"second document", "noop", idempotency_key="k")
    assert not service.storage.exists(hashlib.sha256(b"second document").hexdigest())
    [kept] = service.store.inputs([first.id])[first.id]
    assert service.storage.exists(kept.sha256)
