"""SQLite writers of several processes take turns on a lock file, not on SQLite's busy handler."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from docqueue.store import make_engine
from docqueue.store.engine import write_transaction

#: Another process: opens a write transaction, says so, waits for a line, then writes and commits.
HOLDER = textwrap.dedent(
    """
    import sys
    from sqlalchemy import text
    from docqueue.store import make_engine
    from docqueue.store.engine import write_transaction
    with write_transaction(make_engine(sys.argv[1])) as conn:
        print("held", flush=True)
        sys.stdin.readline()
        conn.execute(text("CREATE TABLE marks (who TEXT)"))
        conn.execute(text("INSERT INTO marks VALUES ('holder')"))
    """
)


def test_a_writer_waits_for_another_process_and_sees_its_commit(tmp_path: Path) -> None:
    """While another process is inside a write transaction, its lock file is held (a try to
    take it fails); a write transaction here begins only after that one has committed."""
    database = tmp_path / "docqueue.db"
    url = f"sqlite:///{database}"
    engine = make_engine(url)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with open(f"{database}-writer.lock", "rb") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.stdin.write("go on\n")
        holder.stdin.flush()
        with write_transaction(engine) as conn:
            marks = conn.execute(text("SELECT who FROM marks")).scalars().all()
            conn.execute(text("INSERT INTO marks VALUES ('here')"))
        assert marks == ["holder"], "the other process had committed before this one began"
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        engine.dispose()
