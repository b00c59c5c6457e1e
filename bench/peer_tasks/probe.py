"""What every peer's no-op task does: note in Redis when it started, so the producer can time it.

Each task makes one RPUSH of "<enqueued_at> <started_at> <worker>" to `bench:<phase>`, the same
cheap, observable step for every peer. `<worker>` tells worker processes apart during warm-up.
"""

import functools
import os
import time

import redis
import redis.asyncio

#: Redis database the peers use as broker (Celery, RQ, Dramatiq) and all of them as recorder.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
#: PostgreSQL database holding pgqueuer's tables (in their own schema).
PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def key(phase: str) -> str:
    """The Redis list that collects the records of one phase (warmup, drain, pickup)."""
    return f"bench:{phase}"


def worker_identity() -> str:
    """Who ran the job: the worker number set by the harness, else this process's id."""
    return os.environ.get("BENCH_WORKER_ID") or str(os.getpid())


@functools.cache
def client() -> redis.Redis:
    """This process's Redis client (made lazily, so after any fork)."""
    return redis.Redis.from_url(REDIS_URL)


@functools.cache
def async_client() -> redis.asyncio.Redis:
    """This process's asyncio Redis client, for peers whose tasks are coroutines."""
    return redis.asyncio.Redis.from_url(REDIS_URL)


def record(phase: str, enqueued_at: float) -> None:
    """Note that a job of `phase`, enqueued at `enqueued_at`, has started now."""
    started_at = time.time()
    client().rpush(key(phase), f"{enqueued_at!r} {started_at!r} {worker_identity()}")


async def record_async(phase: str, enqueued_at: float) -> None:
    """Like `record`, without blocking the worker's event loop."""
    started_at = time.time()
    await async_client().rpush(key(phase), f"{enqueued_at!r} {started_at!r} {worker_identity()}")
