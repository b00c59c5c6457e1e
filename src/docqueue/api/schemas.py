"""The shapes of API requests and answers, kept apart from the tables and the models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self
from urllib.parse import quote
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from docqueue.models import (
    JSON,
    MAX_DELAY_SECONDS,
    Artifact,
    Job,
    JobEvent,
    JobState,
    Priority,
    QueueStats,
    WorkerInfo,
    redacted,
)

SHA256_PATTERN = r"^[0-9a-f]{64}$"


def job_path(job_id: UUID) -> str:
    """The URL path of a job."""
    return f"/v1/jobs/{job_id}"


class JobSubmission(BaseModel):
    """What `POST /v1/jobs` takes, as a JSON body or as the fields of a multipart form."""

    model_config = ConfigDict(extra="forbid")

    #: The operation to run (`noop`, `ingest`, ...).
    operation: str = Field(min_length=1, max_length=200)
    #: Params of the operation, checked against its model.
    params: JSON = Field(default_factory=dict)
    #: `high`, `normal`, `low` or a number 0-9; higher runs first.
    priority: StrictInt | str = "normal"
    #: Queue to put the job in; the operation's own queue when left out.
    queue: str | None = Field(default=None, min_length=1, max_length=200)
    #: Run no earlier than this time (with its UTC offset: 2030-01-01T09:00:00Z).
    run_at: AwareDatetime | None = None
    #: Run no earlier than this many seconds from now (at most ten years).
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS, allow_inf_nan=False)
    #: Attempts before the job fails for good; the operation's own setting when left out.
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    #: The sha256 of a file already stored (an earlier job's input or output) to run on again.
    input_artifact: str | None = Field(default=None, pattern=SHA256_PATTERN)
    #: File name recorded for `input_artifact`.
    input_name: str | None = Field(default=None, max_length=255)

    @field_validator("priority")
    @classmethod
    def _known_priority(cls, value: int | str) -> int:
        """Turn a priority name into its number, or say which ones exist."""
        return Priority.parse(value)

    @model_validator(mode="after")
    def _one_start_time(self) -> Self:
        """`run_at` and `delay` say the same thing; only one may be given."""
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give run_at or delay, not both")
        return self


class JobLinks(BaseModel):
    """Where to go next for a job."""

    self: str
    result: str
    events: str
    artifacts: str
    cancel: str
    retry: str


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: UUID
    status: JobState
    operation: str
    queue: str
    priority: int
    params: JSON
    attempt: int
    max_attempts: int
    #: Waiting jobs of the same queue that will start before this one, counted up to 1,000
    #: (waiting jobs only; not filled in lists).
    position: int | None = None
    progress: float | None = None
    progress_message: str | None = None
    result: JSON | None = None
    error: JSON | None = None
    worker_id: str | None = None
    idempotency_key: str | None = None
    batch_id: UUID | None = None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: JobLinks

    @classmethod
    def of(cls, job: Job, position: int | None = None) -> JobOut:
        """The API view of `job`."""
        path = job_path(job.id)
        return cls(
            id=job.id,
            status=job.status,
            operation=job.operation,
            queue=job.queue,
            priority=job.priority,
            params=redacted(job.params),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            position=position,
            progress=job.progress,
            progress_message=job.progress_message,
            result=job.result,
            error=_public_error(job.error),
            worker_id=job.worker_id,
            idempotency_key=job.idempotency_key,
            batch_id=job.batch_id,
            created_at=job.created_at,
            run_at=job.run_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links=JobLinks(
                self=path,
                result=f"{path}/result",
                events=f"{path}/events",
                artifacts=f"{path}/artifacts",
                cancel=f"{path}/cancel",
                retry=f"{path}/retry",
            ),
        )


def _public_error(error: JSON | None) -> JSON | None:
    """A job's error without the traceback, which tells clients about our code, not their input."""
    if error is None:
        return None
    return {key: value for key, value in error.items() if key != "traceback"}


class JobPageOut(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next one."""

    items: list[JobOut]
    next_cursor: str | None


class ResultOut(BaseModel):
    """The outcome of a finished job."""

    job_id: UUID
    status: JobState
    result: JSON | None
    error: JSON | None
    finished_at: datetime | None


class ArtifactOut(BaseModel):
    """A file a job read (`input`) or wrote (`output`)."""

    name: str
    role: str
    media_type: str
    size: int
    sha256: str
    url: str

    @classmethod
    def of(cls, job_id: UUID, artifact: Artifact) -> ArtifactOut:
        """The API view of `artifact`."""
        return cls(
            name=artifact.name,
            role=artifact.role,
            media_type=artifact.media_type,
            size=artifact.size,
            sha256=artifact.sha256,
            url=f"{job_path(job_id)}/artifacts/{quote(artifact.name, safe='')}",
        )


class ArtifactListOut(BaseModel):
    """The files of one job."""

    items: list[ArtifactOut]


class EventOut(BaseModel):
    """One entry of a job's timeline, as the data of a server-sent event."""

    id: int
    job_id: UUID
    type: str
    at: datetime
    data: JSON

    @classmethod
    def of(cls, event: JobEvent) -> EventOut:
        """The API view of `event`."""
        return cls(id=event.id, job_id=event.job_id, type=event.type, at=event.at, data=event.data)


class QueueStatsOut(BaseModel):
    """Jobs per state, overall and per queue, the oldest waiting job's age, recent throughput."""

    totals: dict[str, int]
    queues: dict[str, dict[str, int]]
    oldest_queued_age_seconds: float | None
    finished_last_minute: int

    @classmethod
    def of(cls, stats: QueueStats) -> QueueStatsOut:
        """The API view of `stats`."""
        return cls(
            totals={state.value: stats.total(state) for state in JobState},
            queues=stats.counts,
            oldest_queued_age_seconds=stats.oldest_queued_age,
            finished_last_minute=stats.finished_last_minute,
        )


class ProcessOut(BaseModel):
    """What one call of the cron trigger did."""

    processed: int
    completed: int
    failed: int


class WorkerOut(BaseModel):
    """A worker process and when it was last heard from."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    last_heartbeat_at: datetime
    stopped_at: datetime | None
    #: Running and heard from within the readiness window.
    alive: bool

    @classmethod
    def of(cls, worker: WorkerInfo, alive: bool) -> WorkerOut:
        """The API view of `worker`."""
        return cls(
            id=worker.id,
            host=worker.host,
            pid=worker.pid,
            queues=worker.queues,
            concurrency=worker.concurrency,
            started_at=worker.started_at,
            last_heartbeat_at=worker.last_heartbeat_at,
            stopped_at=worker.stopped_at,
            alive=alive,
        )


class WorkerListOut(BaseModel):
    """Known workers, newest first."""

    items: list[WorkerOut]


class HealthOut(BaseModel):
    """The answer of `/healthz` and of a passing `/readyz`."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class Problem(BaseModel):
    """An error answer (RFC 9457, `application/problem+json`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
