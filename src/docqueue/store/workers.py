"""WorkerRegistry: the rows that say which workers exist and when each was last heard from."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update

from docqueue.models import WorkerInfo, utcnow
from docqueue.store.engine import read_transaction, write_transaction
from docqueue.store.rows import worker_from_row
from docqueue.store.tables import workers


class WorkerRegistry:
    """Registers workers, records their heartbeats and lists them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(
        self, worker_id: str, *, host: str, pid: int, queues: Sequence[str], concurrency: int
    ) -> None:
        """Record a worker that has just started."""
        now = utcnow()
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    host=host,
                    pid=pid,
                    queues=list(queues),
                    concurrency=concurrency,
                    started_at=now,
                    last_heartbeat_at=now,
                )
            )

    def beat(self, worker_id: str, *, now: datetime | None = None) -> None:
        """Record that the worker is alive."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(last_heartbeat_at=now or utcnow())
            )

    def stop(self, worker_id: str) -> None:
        """Record that the worker stopped on purpose."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(workers).where(workers.c.id == worker_id).values(stopped_at=utcnow())
            )

    def list(self, *, alive_within: timedelta | None = None) -> list[WorkerInfo]:
        """Workers newest first; with `alive_within`, only running ones heard from that recently."""
        query = select(workers).order_by(workers.c.started_at.desc())
        if alive_within is not None:
            query = query.where(
                workers.c.stopped_at.is_(None),
                workers.c.last_heartbeat_at >= utcnow() - alive_within,
            )
        with read_transaction(self.engine) as conn:
            return [worker_from_row(row) for row in conn.execute(query).all()]

    def forget(self, older_than: timedelta) -> int:
        """Delete rows of workers not heard from in `older_than`."""
        with write_transaction(self.engine) as conn:
            return conn.execute(
                delete(workers).where(workers.c.last_heartbeat_at < utcnow() - older_than)
            ).rowcount
