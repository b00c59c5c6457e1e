"""DocumentQueueService: docqueue as a library, for applications that enqueue from their own code."""

from __future__ import annotations

import mimetypes
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from docqueue.errors import Conflict, InvalidJob
from docqueue.models import (
    JSON,
    MAX_DELAY_SECONDS,
    Artifact,
    Completion,
    ErrorInfo,
    Failed,
    Job,
    JobState,
    NewJob,
    Priority,
    Succeeded,
    utcnow,
)
from docqueue.processors import Processor, Registry, builtin_registry
from docqueue.runner import Runner
from docqueue.settings import Settings
from docqueue.storage import Storage, sniff_media_type
from docqueue.store import JobStore, upgrade

Item = Job | UUID | str


@dataclass(frozen=True)
class ProcessReport:
    """What one `process_document_queue` call did."""

    processed: int
    completed: int
    failed: int


class DocumentQueueService:
    """Enqueue documents, inspect and drive the queue; a thin face over JobStore and the runner."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: JobStore | None = None,
        registry: Registry | None = None,
        storage: Storage | None = None,
        migrate: bool = True,
    ) -> None:
        self.settings = settings or Settings()
        self.storage = storage or Storage(self.settings.resolved_storage_url)
        self.store = store or JobStore.from_settings(self.settings, files=self.storage)
        if self.store.files is None:  # a store given without its files checks this storage
            self.store.files = self.storage
        if migrate:
            upgrade(self.store.engine)
        self.registry = registry or builtin_registry(self.settings.imports)
        self.worker_id = f"service:{socket.gethostname()}:{os.getpid()}"
        self._runner: Runner | None = None

    def enqueue(
        self,
        document: str | os.PathLike[str] | bytes | None,
        operation: str,
        priority: int | str = Priority.NORMAL,
        *,
        params: JSON | None = None,
        queue: str | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        name: str | None = None,
    ) -> Job:
        """Queue `operation` on `document` (a path, bytes, or None for operations without a file)."""
        self.registry.validate(operation, params or {})  # refuse bad params before storing
        inputs = () if document is None else (self.store_document(document, name),)
        try:
            new = self.new_job(
                operation,
                params,
                priority,
                inputs=inputs,
                queue=queue,
                run_at=run_at,
                delay=delay,
                idempotency_key=idempotency_key,
                max_attempts=max_attempts,
            )
            job, _created = self.store.enqueue(new)
        except BaseException:
            self.forget_unused(inputs)
            raise
        return job

    def new_job(
        self,
        operation: str,
        params: JSON | None = None,
        priority: int | str = Priority.NORMAL,
        *,
        inputs: tuple[Artifact, ...] = (),
        queue: str | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> NewJob:
        """A job to store, checked: a known operation, valid params, a sane time to run."""
        processor = self.registry.get(operation)
        clean = self._limited(processor, self.registry.validate(operation, params or {}))
        if delay is not None:
            try:
                run_at = utcnow() + timedelta(seconds=delay)
            except (OverflowError, ValueError):
                raise InvalidJob(f"delay {delay} is not a number of seconds to wait") from None
        if run_at is not None and run_at.utcoffset() is None:
            raise InvalidJob(
                f"run_at {run_at.isoformat()} has no time zone; give one (UTC: ...Z or +00:00)"
            )
        if run_at is not None and abs(run_at - utcnow()) > timedelta(seconds=MAX_DELAY_SECONDS):
            raise InvalidJob(
                f"run_at {run_at.isoformat()} is more than ten years away; give a nearer time"
            )
        return NewJob(
            operation=operation,
            params=clean,
            queue=queue or processor.queue or "default",
            priority=Priority.parse(priority),
            run_at=run_at,
            max_attempts=max_attempts or processor.max_attempts,
            idempotency_key=idempotency_key,
            input_artifacts=inputs,
        )

    def _limited(self, processor: Processor, params: JSON) -> JSON:
        """Params with the server's page limit applied, for processors that take `max_pages`."""
        model = processor.params_model
        if model is None or "max_pages" not in model.model_fields:
            return params
        asked = params.get("max_pages") or self.settings.max_pages
        return {**params, "max_pages": min(asked, self.settings.max_pages)}

    def forget_unused(self, inputs: tuple[Artifact, ...]) -> None:
        """Remove the bytes stored for a job that was not made, unless another job names them."""
        self.store.forget_files(a.sha256 for a in inputs)

    def store_document(
        self, document: str | os.PathLike[str] | bytes, name: str | None
    ) -> Artifact:
        """Put a document into storage and describe it as an input artifact."""
        if isinstance(document, bytes):
            blob = self.storage.put_bytes(document)
            head, label = document[:1024], name or "document"
        else:
            path = Path(document)
            blob = self.storage.put_file(path)
            with path.open("rb") as file:
                head = file.read(1024)
            label = name or path.name
        media_type = sniff_media_type(head) or mimetypes.guess_type(label)[0]
        return Artifact(
            sha256=blob.sha256,
            size=blob.size,
            media_type=media_type or "application/octet-stream",
            name=label,
            role="input",
        )

    def get_pending_items(self, limit: int = 10) -> list[Job]:
        """The next queued jobs, in the order workers will take them."""
        return self.store.pending(self.settings.queues, limit)

    def mark_in_progress(self, item: Item) -> Job:
        """Claim a queued job for this process; it must be completed or failed within the lease."""
        job_id = _id(item)
        job = self.store.claim_job(
            job_id, self.worker_id, lease_seconds=self.settings.lease_seconds
        )
        if job is None:
            current = self.store.get(job_id)
            raise Conflict(f"job {job_id} is {current.status}; only a queued job can be started")
        return job

    def mark_completed(self, item: Item, result: JSON | None = None) -> Job:
        """Record success of a job this process started."""
        return self._finish(item, Succeeded(result or {}))

    def mark_failed(self, item: Item, error_message: str, *, permanent: bool = False) -> Job:
        """Record a failed attempt: retried with backoff while attempts remain, unless permanent."""
        return self._finish(item, Failed(ErrorInfo("ApplicationError", error_message), permanent))

    def get_queue_stats(self) -> dict[str, Any]:
        """Counts per state (all queues), per queue, the oldest waiting age, recent throughput."""
        stats = self.store.stats()
        return {
            **{state.value: stats.total(state) for state in JobState},
            "queues": stats.counts,
            "oldest_queued_age_seconds": stats.oldest_queued_age,
            "finished_last_minute": stats.finished_last_minute,
        }

    def process_document_queue(self, limit: int = 10) -> ProcessReport:
        """Run up to `limit` due jobs here, in this process, one after the other."""
        jobs = self.store.claim(
            self.worker_id,
            self.settings.queues,
            limit,
            lease_seconds=self.settings.lease_seconds,
            queue_limits=self.settings.queue_limits,
        )
        inputs = self.store.inputs([job.id for job in jobs])
        completed = failed = 0
        for job in jobs:
            outcome = self.runner.execute(job, inputs.get(job.id, []))
            state = self.store.complete([Completion(job.id, job.attempt, outcome)])[0]
            completed += state == JobState.SUCCEEDED
            failed += state in (JobState.FAILED, JobState.SCHEDULED)
        return ProcessReport(processed=len(jobs), completed=completed, failed=failed)

    @property
    def runner(self) -> Runner:
        """The in-process runner, made on first use so resources load only when needed."""
        if self._runner is None:
            self._runner = Runner(self.registry, self.storage)
        return self._runner

    def _finish(self, item: Item, outcome: Succeeded | Failed) -> Job:
        """Complete the attempt this process holds on `item`."""
        job = self.store.get(_id(item))
        held = job.status == JobState.RUNNING and job.worker_id == self.worker_id
        if not held or self.store.complete([Completion(job.id, job.attempt, outcome)])[0] is None:
            raise Conflict(
                f"job {job.id} is {job.status} and not held by this process; "
                "call mark_in_progress first (or its lease expired and it was taken back)"
            )
        return self.store.get(job.id)


def _id(item: Item) -> UUID:
    """The job id of a Job, a UUID or its text."""
    if isinstance(item, Job):
        return item.id
    return item if isinstance(item, UUID) else UUID(item)
