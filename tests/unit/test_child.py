"""A worker child process, real and forked as the supervisor forks it, running a chunk of jobs."""

from __future__ import annotations

import ctypes
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from docqueue.dispatch.local import Supervisor
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


def test_a_child_hands_back_the_jobs_asked_back_before_starting_them(tmp_path: Path) -> None:
    """Asked for two jobs back while it runs the first of a chunk of five, the child answers
    before its next job with where the chunk now ends, runs the jobs before that, and reports
    only those: the two it gave are not started (another child runs them)."""
    settings = quick_settings(f"sqlite:///{tmp_path / 'docqueue.db'}", tmp_path)
    mp = multiprocessing.get_context("forkserver")
    running = mp.RawValue(ctypes.c_int, 1)  # held here: the child maps it while it starts
    child = ChildHandle.spawn(mp, settings, running)
    try:
        chunk = [running_job({"sleep_ms": 500})] + [running_job({}) for _ in range(4)]
        child.assign([(job, []) for job in chunk])
        assert child.unstarted() == 4
        child.ask_back(2)
        assert child.unstarted() == 0, "no second request while one is pending"
        assert child.conn.poll(20)
        assert child.conn.recv() == ("handed back", 3)
        assert [job for job, _ in child.handed_back(3)] == chunk[3:]
        assert child.conn.poll(20)
        kind, outcomes = child.conn.recv()
        assert kind == "done"
        assert [(job_id, type(outcome)) for job_id, _, outcome in outcomes] == [
            (job.id, Succeeded) for job in chunk[:3]
        ]
    finally:
        child.stop()


def test_an_idle_child_takes_the_jobs_a_busy_one_hands_back(tmp_path: Path) -> None:
    """Nothing buffered and one child idle: the supervisor asks the child that holds a chunk
    for half of the jobs it has not started, buffers them when they come back, and hands them
    to the idle child; each child reports only the jobs it ran."""
    supervisor = Supervisor(quick_settings(f"sqlite:///{tmp_path / 'docqueue.db'}", tmp_path))
    holder, idle = supervisor.children = [supervisor._spawn(), supervisor._spawn()]
    try:
        chunk = [running_job({"sleep_ms": 500})] + [running_job({}) for _ in range(4)]
        holder.assign([(job, []) for job in chunk])
        supervisor._assign()
        assert holder.asked_back == 2
        assert holder.conn.poll(20)
        supervisor._receive(holder)
        assert [job for job, _ in supervisor.buffer] == chunk[3:]
        supervisor._assign()  # jobs not timed yet count as long ones: one each
        assert [job for job, _ in idle.tasks] == [chunk[3]]
        for child, ran in ((idle, chunk[3:4]), (holder, chunk[:3])):
            assert child.conn.poll(20)
            kind, outcomes = child.conn.recv()
            assert kind == "done"
            assert [job_id for job_id, _, _ in outcomes] == [job.id for job in ran]
    finally:
        for child in supervisor.children:
            child.stop()
        supervisor.close()
