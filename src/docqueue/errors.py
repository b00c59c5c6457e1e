"""The errors docqueue raises, each saying what went wrong and what to do about it."""

from __future__ import annotations


class DocqueueError(Exception):
    """Base of every error docqueue raises on purpose."""


class InputError(DocqueueError):
    """The input can never succeed as given (corrupt file, bad params): fail at once, never retry."""


class RetryableError(DocqueueError):
    """A passing failure (a service down, a timeout): the job is retried with backoff."""


class InvalidJob(InputError):
    """A submission refused whole at enqueue: unknown operation, bad params, unserialisable data."""


class UnsupportedMediaType(InvalidJob):
    """The input file is of a type the operation does not read (told by its bytes, not its name)."""


class IdempotencyKeyReused(InvalidJob):
    """An Idempotency-Key already names a job made from another request."""


class NotFound(DocqueueError):
    """The job, artifact or template asked for does not exist (or was pruned)."""


class Conflict(DocqueueError):
    """The action is not allowed in the job's current state (cancel a finished job, retry a queued one)."""


class FileRemoved(Conflict):
    """A file a submission names was removed (its last job deleted) before the job was made."""


class QueueFull(DocqueueError):
    """The queue holds as many waiting jobs as it may; try again later."""

    def __init__(self, queue: str, limit: int, retry_after: int = 5) -> None:
        super().__init__(
            f"queue {queue!r} already holds {limit} waiting jobs; retry in {retry_after} seconds"
        )
        self.queue = queue
        self.limit = limit
        self.retry_after = retry_after
