"""A worker child process, real and forked as the supervisor forks it, running a chunk of jobs."""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from collections.abc import Callable
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


def next_message(child: ChildHandle) -> tuple[object, ...]:
    """The next message from the child that is not a progress report (within 20 s); "ran"
    marks the child ready for the next chunk as a supervisor's `_receive` would."""
    while True:
        assert child.conn.poll(20), "the child sent nothing for 20 s"
        message: tuple[object, ...] = child.conn.recv()
        if message[0] == "ran":
            child.ran()
        if message[0] != "progress":
            return message


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    """True once `condition` holds, False if it does not within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


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
        assert wait_for(lambda: child.current() is not None)
        assert child.current() == slow
        child.stop_job(slow, grace=30)
        assert child.runs_stopped_job()
        assert next_message(child) == ("ran",), "well before the slow job's 20 s"
        assert child.ready and child.current() is None
        kind, outcomes = next_message(child)
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
        assert next_message(child) == ("ran",)
        _, outcomes = next_message(child)
        [(_, _, failed), (_, _, succeeded)] = outcomes
        assert isinstance(failed, Failed) and failed.error.type == "SystemExit"
        assert "exit(3)" in failed.error.message
        assert isinstance(succeeded, Succeeded)
        assert child.process.is_alive()
    finally:
        child.stop()


def test_the_next_chunk_runs_while_the_last_ones_outcomes_are_on_their_way(
    tmp_path: Path,
) -> None:
    """A child takes its next chunk once it says "ran", before the last chunk is "done": its
    jobs keep their numbers across chunks, so the supervisor finds the running one and stops
    it, whichever chunk's outcomes have arrived."""
    settings = quick_settings(f"sqlite:///{tmp_path / 'docqueue.db'}", tmp_path)
    mp = multiprocessing.get_context("forkserver")
    running = mp.RawValue(ctypes.c_int, 1)  # held here: the child maps it while it starts
    child = ChildHandle.spawn(mp, settings, running)
    try:
        first = running_job({})
        child.assign([(first, [])])
        assert next_message(child) == ("ran",)
        slow, quick = running_job({"sleep_ms": 20_000}), running_job({})
        child.assign([(slow, []), (quick, [])])  # the first chunk may not be reported yet
        assert wait_for(lambda: child.current() is not None)
        assert child.current() == slow
        child.stop_job(slow, grace=30)
        reported: list[tuple[object, ...]] = []
        while len(reported) < 3:
            message = next_message(child)
            if message[0] == "done":
                [outcomes] = message[1:]
                assert isinstance(outcomes, list)
                child.reported(len(outcomes))
                reported += [(job_id, type(outcome)) for job_id, _, outcome in outcomes]
                assert child.current() in (None, slow)
            else:
                assert message == ("ran",)
        assert reported == [(first.id, Succeeded), (slow.id, Cancelled), (quick.id, Succeeded)]
        assert child.ready and not child.busy
    finally:
        child.stop()


def test_a_child_with_a_chunk_still_storing_its_outputs_takes_one_more_and_no_more(
    tmp_path: Path,
) -> None:
    """Its outputs on their way, a chunk counts against the child: it takes the next chunk,
    but not a third while the first is unreported. Between jobs, a death is charged to the
    oldest job it holds, whose outputs it was storing."""
    settings = quick_settings(f"sqlite:///{tmp_path / 'docqueue.db'}", tmp_path)
    mp = multiprocessing.get_context("forkserver")
    running = mp.RawValue(ctypes.c_int, 1)  # held here: the child maps it while it starts
    child = ChildHandle.spawn(mp, settings, running)
    try:
        first, second = running_job({}), running_job({})
        child.assign([(first, [])])
        assert next_message(child) == ("ran",)
        withheld = next_message(child)  # as if its outputs were still being stored
        assert withheld[0] == "done"
        assert child.takes_chunk and child.blamed() == first
        child.assign([(second, [])])
        assert next_message(child) == ("ran",)
        assert child.ready and not child.takes_chunk, "two chunks unreported"
        assert child.current() is None and child.blamed() == first
        child.reported(1)
        assert child.takes_chunk and child.blamed() == second
    finally:
        child.stop()


def test_a_child_that_does_not_store_its_outputs_within_the_timeout_is_killed(
    tmp_path: Path,
) -> None:
    """The supervisor heard "ran" but no outcomes for longer than the job's timeout (its
    storage stalled): the child is killed and replaced, the oldest job fails with a timeout,
    and the other jobs it held go back to the queue. Outcomes that reached the pipe before the
    deadline are taken in, not thrown away with the child."""
    settings = quick_settings(f"sqlite:///{tmp_path / 'docqueue.db'}", tmp_path)
    supervisor = Supervisor(settings)
    child = ChildHandle.spawn(supervisor.mp, settings, supervisor.running)
    supervisor.children = [child]
    try:
        late = running_job({})
        child.assign([(late, [])])
        assert next_message(child) == ("ran",)
        assert child.conn.poll(20)  # its "done" waits in the pipe
        child.ran_at -= settings.job_timeout
        supervisor._enforce_deadlines()
        assert supervisor.children == [child] and not child.busy
        assert [c.job_id for c in supervisor.pending.completions] == [late.id]
        supervisor.pending.completions = []

        stuck, next_one = running_job({}), running_job({})
        for job in (stuck, next_one):
            child.assign([(job, [])])
            assert next_message(child) == ("ran",)
            assert next_message(child)[0] == "done"  # withheld: as if never stored
        supervisor._enforce_deadlines()
        assert supervisor.children == [child], "within the timeout"
        child.ran_at -= settings.job_timeout
        supervisor._enforce_deadlines()
        assert not child.process.is_alive() and supervisor.children != [child]
        [failed] = supervisor.pending.completions
        assert failed.job_id == stuck.id and isinstance(failed.outcome, Failed)
        assert failed.outcome.error.type == "JobTimeout"
        assert "outputs were not stored" in failed.outcome.error.message
        assert supervisor.pending.release == [(next_one.id, next_one.attempt)]
    finally:
        for handle in supervisor.children:
            handle.stop()
        supervisor.close()
