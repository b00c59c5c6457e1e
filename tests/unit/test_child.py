"""A worker child process, real and forked as the supervisor forks it, running a chunk of jobs."""

from __future__ import annotations

import ctypes
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from docqueue.dispatch.pool import ChildHandle
from docqueue.models import Cancelled, Failed, Job, JobState, Succeeded
from tests.conftest import quick_settings


def now_twice() -> tuple[datetime, datetime]:
    """Now, as a job's run_at and created_at."""
    now = datetime.now(UTC)
    return now, now


def running_job(params: dict[str, object]) -> Job:
    """A claimed `noop` job, as a chunk holds it."""
    return Job(uuid4(), "noop", "default", params, JobState.RUNNING, 0, 1, 3, *now_twice())


def test_stopping_one_job_of_a_chunk_leaves_the_next_ones_running(tmp_path: Path) -> None:
    """The supervisor stops the first job of a chunk of three (cancelled, or its lease lost):
    that one ends cancelled, and the two after it run to success in the same child."""
    settings = quick_settings(f"sqlite:///{tmp_path / 'docqueue.db'}", tmp_path)
    mp = multiprocessing.get_context("forkserver")
    running = mp.RawValue(ctypes.c_int, 1)  # held here: the child maps it while it starts
    child = ChildHandle.spawn(mp, settings, running)
    try:
        slow = running_job({"sleep_ms": 20_000})
        chunk = [slow, running_job({}), running_job({"sleep_ms": 10})]
        child.assign([(job, []) for job in chunk])
        assert child.current() == slow
        child.stop_job(slow, grace=30)
        assert child.runs_stopped_job()
        assert child.conn.poll(20), "the child answers well before the slow job's 20 s"
        kind, outcomes = child.conn.recv()
        assert kind == "done"
        assert [(job_id, type(outcome)) for job_id, _, outcome in outcomes] == [
            (slow.id, Cancelled),
            (chunk[1].id, Succeeded),
            (chunk[2].id, Succeeded),
        ]
        assert not child.runs_stopped_job()
    finally:
        child.stop()


def test_a_processor_that_exits_fails_its_job_and_not_the_child(tmp_path: Path) -> None:
    """exit() in a processor is its job's failure; the child lives on and runs the next job of
    its chunk (a child that died would charge the job it was on and give the rest back)."""
    settings = quick_settings(
        f"sqlite:///{tmp_path / 'docqueue.db'}", tmp_path, imports=["tests.e2e.processors"]
    )
    mp = multiprocessing.get_context("forkserver")
    running = mp.RawValue(ctypes.c_int, 1)  # held here: the child maps it while it starts
    child = ChildHandle.spawn(mp, settings, running)
    try:
        careless = Job(uuid4(), "exits", "default", {}, JobState.RUNNING, 0, 1, 3, *now_twice())
        after = running_job({})
        child.assign([(careless, []), (after, [])])
        assert child.conn.poll(20)
        _, outcomes = child.conn.recv()
        [(_, _, failed), (_, _, succeeded)] = outcomes
        assert isinstance(failed, Failed) and failed.error.type == "SystemExit"
        assert "exit(3)" in failed.error.message
        assert isinstance(succeeded, Succeeded)
        assert child.process.is_alive()
    finally:
        child.stop()
