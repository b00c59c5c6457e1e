"""Dramatiq on its Redis broker with its default middleware."""

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peer_tasks import probe

dramatiq.set_broker(RedisBroker(url=probe.REDIS_URL))


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(phase: str, enqueued_at: float) -> None:
    """Do nothing but note the start."""
    probe.record(phase, enqueued_at)


def enqueue(phase: str, enqueued_at: float) -> None:
    """Send one no-op message."""
    noop.send(phase, enqueued_at)
