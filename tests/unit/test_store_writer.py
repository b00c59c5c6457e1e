"""StoreWriter: the supervisor's commits on a thread, and the eventfd that says one finished."""

from __future__ import annotations

import os
import select
import threading

from docqueue.dispatch.writer import StoreWriter
from docqueue.models import NewJob
from docqueue.settings import Settings
from docqueue.store import JobStore


def _readable(fd: int, timeout: float) -> bool:
    """True when `fd` becomes readable within `timeout` seconds."""
    return bool(select.select([fd], [], [], timeout)[0])


def test_a_wakeup_always_finds_its_commit_finished(store: JobStore, settings: Settings) -> None:
    """When the eventfd wakes the supervisor, `collect` has the commit's result, and once
    collected the eventfd is quiet: a signal sent before the future was done made the
    supervisor's loop wake over and over, finding nothing, until the thread finished.

    A thread of pure Python runs meanwhile, as the supervisor's loop does: the writer's thread
    then waits for the interpreter lock between its signal and its result, which is when a
    signal sent too early is seen."""
    for _ in range(30):
        store.enqueue(NewJob("noop"))
    writer = StoreWriter(store, settings, "writer-test", lambda _operation: False)
    done = threading.Event()

    def busy() -> None:
        while not done.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=busy)
    spinner.start()
    try:
        claimed = []
        for _ in range(30):
            writer.start([], 1)
            assert _readable(writer.wakeup, 10.0), "the commit never signalled"
            written = writer.collect()
            assert written is not None, "woken while the commit was still unfinished"
            claimed += written.jobs
            assert not writer.busy
            assert not _readable(writer.wakeup, 0.0), "the eventfd stayed readable"
        assert len({job.id for job in claimed}) == 30
    finally:
        done.set()
        spinner.join()
        writer.close()


def test_a_signal_left_after_its_commit_was_collected_is_read(
    store: JobStore, settings: Settings
) -> None:
    """A commit collected the moment its future finished, before the done callback signalled:
    the late signal wakes the supervisor once, and that turn's `collect` reads it (nothing is
    in flight), so the eventfd does not stay readable and the loop does not spin."""
    writer = StoreWriter(store, settings, "writer-test", lambda _operation: False)
    try:
        os.eventfd_write(writer.wakeup, 1)  # as the late callback does
        assert _readable(writer.wakeup, 0.0)
        assert writer.collect() is None
        assert not _readable(writer.wakeup, 0.0)
    finally:
        writer.close()
