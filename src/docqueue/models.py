"""The data docqueue passes around: jobs, their states, priorities and outcomes. Data only."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any
from uuid import UUID

JSON = dict[str, Any]


#: Params never shown back by the API or the command line (a PDF's password); a processor
#: that takes a secret gives its param one of these names.
SECRET_PARAMS = frozenset({"password"})


def redacted(params: JSON) -> JSON:
    """`params` with every secret value masked, for showing a job to people."""
    return {key: "***" if key in SECRET_PARAMS else value for key, value in params.items()}


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


class JobState(StrEnum):
    """Where a job stands. Every change is one conditional update in the store."""

    #: Waiting for a worker; claimable now.
    QUEUED = "queued"
    #: Waiting for its time (a delayed job, or a retry in backoff); queued once `run_at` passes.
    SCHEDULED = "scheduled"
    #: Claimed by a worker that holds its lease.
    RUNNING = "running"
    #: Finished with a result.
    SUCCEEDED = "succeeded"
    #: Finished without one: no attempts left, or an input error (the dead-letter set).
    FAILED = "failed"
    #: Stopped by request before it finished.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the states a job never leaves on its own."""
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
WAITING_STATES = frozenset({JobState.QUEUED, JobState.SCHEDULED})


class Priority(IntEnum):
    """Named priorities on the 0-9 scale; higher runs first."""

    LOW = 2
    NORMAL = 5
    HIGH = 8

    @classmethod
    def parse(cls, value: int | str | Priority) -> int:
        """Turn `high`, `normal`, `low` or a number 0-9 into the stored number."""
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            try:
                return int(cls[value.strip().upper()])
            except KeyError:
                raise ValueError(
                    f"unknown priority {value!r}; use high, normal, low or a number 0-9"
                ) from None
        number = int(value)
        if not 0 <= number <= 9:
            raise ValueError(f"priority {number} is out of range; use a number 0-9")
        return number


@dataclass(frozen=True)
class ErrorInfo:
    """Why an attempt failed, as a person will read it."""

    type: str
    message: str
    traceback: str | None = None

    def as_json(self) -> JSON:
        """The stored form."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class Succeeded:
    """The processor finished; `result` is a small JSON document, `artifacts` its stored outputs."""

    result: JSON = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()


@dataclass(frozen=True)
class Failed:
    """The attempt failed; `permanent` failures (input errors) are never retried."""

    error: ErrorInfo
    permanent: bool = False


@dataclass(frozen=True)
class Cancelled:
    """The processor saw the job cancelled and stopped."""


Outcome = Succeeded | Failed | Cancelled


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits base * 2**(n-1), capped, times 0.5 to 1."""

    base_delay: float = 2.0
    max_delay: float = 600.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after `attempt` (which counts from 1)."""
        # The exponent stops growing long before a float would overflow (attempt numbers go
        # on across manual retries).
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(max(attempt - 1, 0), 60))
        fraction: float = (rng or random).random()
        return ceiling * (0.5 + 0.5 * fraction)


#: Furthest a job may be scheduled ahead (run_at, delay): ten years.
MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class NewJob:
    """What a client asks for; the store turns it into a `Job`."""

    operation: str
    params: JSON = field(default_factory=dict)
    queue: str = "default"
    priority: int = Priority.NORMAL
    run_at: datetime | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    idempotency_key: str | None = None
    batch_id: UUID | None = None
    owner: str | None = None
    input_artifacts: tuple[Artifact, ...] = ()


@dataclass(frozen=True)
class Job:
    """One stored job, as read from the store."""

    id: UUID
    operation: str
    queue: str
    params: JSON
    status: JobState
    priority: int
    attempt: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    timeout: float | None = None
    lease_expires_at: datetime | None = None
    worker_id: str | None = None
    idempotency_key: str | None = None
    batch_id: UUID | None = None
    owner: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    result: JSON | None = None
    error: JSON | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Claim:
    """A job held by a worker: the attempt number is the fencing token for completing it."""

    job: Job
    worker_id: str

    @property
    def attempt(self) -> int:
        """The fencing token."""
        return self.job.attempt


@dataclass(frozen=True)
class Completion:
    """What a worker reports for a claim it held."""

    job_id: UUID
    attempt: int
    outcome: Outcome


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's timeline."""

    id: int
    job_id: UUID
    type: str
    at: datetime
    data: JSON


@dataclass(frozen=True)
class Artifact:
    """A file a job read or wrote; the bytes live in storage under `sha256`."""

    sha256: str
    size: int
    media_type: str
    name: str
    role: str
    job_id: UUID | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as registered in the store."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    last_heartbeat_at: datetime
    stopped_at: datetime | None = None


@dataclass(frozen=True)
class QueueStats:
    """Counts per queue and state, with the age of the oldest waiting job."""

    counts: dict[str, dict[str, int]]
    oldest_queued_age: float | None
    finished_last_minute: int

    def total(self, state: JobState) -> int:
        """Jobs in `state` across all queues."""
        return sum(per_state.get(state.value, 0) for per_state in self.counts.values())


@dataclass(frozen=True)
class InputFile:
    """A job's input as the processor sees it: a local file to read."""

    path: str
    name: str
    media_type: str
    sha256: str
