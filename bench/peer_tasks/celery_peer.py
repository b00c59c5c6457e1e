"""Celery 5 on Redis: acks_late, prefetch multiplier 1, no result backend."""

from celery import Celery

from peer_tasks import probe

app = Celery("docqueue_bench", broker=probe.REDIS_URL)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(phase: str, enqueued_at: float) -> None:
    """Do nothing but note the start."""
    probe.record(phase, enqueued_at)


def enqueue(phase: str, enqueued_at: float) -> None:
    """Send one no-op job."""
    noop.delay(phase, enqueued_at)
