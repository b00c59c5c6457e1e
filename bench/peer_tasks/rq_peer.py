"""RQ on Redis; jobs run under the default `rq.Worker`, which forks a work horse per job."""

import functools

import redis
from rq import Queue

from peer_tasks import probe

QUEUE_NAME = "bench"


def noop(phase: str, enqueued_at: float) -> None:
    """Do nothing but note the start."""
    probe.record(phase, enqueued_at)


@functools.cache
def queue() -> Queue:
    """The producer's queue handle."""
    return Queue(QUEUE_NAME, connection=redis.Redis.from_url(probe.REDIS_URL))


def enqueue(phase: str, enqueued_at: float) -> None:
    """Enqueue one no-op job."""
    queue().enqueue(noop, phase, enqueued_at)
