"""pgqueuer on PostgreSQL: asyncpg workers, a psycopg producer, tables in their own schema.

`python -m peer_tasks.pgqueuer_peer` runs one worker through `pgqueuer.run`, which is what
`pgq run` calls; the CLI itself fails in pgqueuer 1.6.0 (typer hands its --log-level option a
str where it expects the enum, even for the default).

The harness sets PGQUEUER_SCHEMA and PGQUEUER_CHANNEL so nothing here touches another install.
"""

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pgqueuer
import psycopg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver, SyncPsycopgDriver
from pgqueuer.domain.settings import db_settings
from pgqueuer.models import Job
from pgqueuer.queries import Queries, SyncQueries

from peer_tasks import probe

ENTRYPOINT = "noop"


def prepare() -> None:
    """Drop the benchmark schema and install pgqueuer's tables afresh with its own installer."""
    asyncio.run(_reinstall())


async def _reinstall() -> None:
    """Run the drop and the install over one asyncpg connection."""
    schema = db_settings().db_schema
    if not schema:
        raise RuntimeError("set PGQUEUER_SCHEMA: the benchmark drops and recreates that schema")
    connection = await asyncpg.connect(probe.PG_DSN)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await Queries(AsyncpgDriver(connection)).install()
    finally:
        await connection.close()


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The worker factory that `pgqueuer.run` (and `pgq run`) starts."""
    connection = await asyncpg.connect(probe.PG_DSN)
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        """Do nothing but note the start."""
        phase, enqueued_at = (job.payload or b"").decode().split()
        await probe.record_async(phase, float(enqueued_at))

    try:
        yield pgq
    finally:
        await connection.close()


@functools.cache
def queries() -> SyncQueries:
    """The producer's synchronous pgqueuer handle."""
    connection = psycopg.connect(probe.PG_DSN, autocommit=True)
    return SyncQueries(SyncPsycopgDriver(connection))


def enqueue(phase: str, enqueued_at: float) -> None:
    """Insert one no-op job."""
    queries().enqueue(ENTRYPOINT, f"{phase} {enqueued_at!r}".encode())


def main() -> None:
    """Run one worker process until SIGTERM or SIGINT."""
    asyncio.run(pgqueuer.run(create_pgqueuer))


if __name__ == "__main__":
    main()
