"""GroupCommit: callers on many threads share transactions, and each gets its own outcome."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from docqueue.store.group import GroupCommit


class Recorder:
    """A write that takes a moment, as a commit does, and remembers each group it was given."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.active = 0
        self.overlapped = False

    def __call__(self, items: Sequence[int]) -> list[str]:
        with self.lock:
            self.active += 1
            self.overlapped |= self.active > 1
        try:
            time.sleep(0.002)
            if self.fail_on in items:
                raise ValueError(f"item {self.fail_on} is refused")
            with self.lock:
                self.groups.append(list(items))
            return [f"written {item}" for item in items]
        finally:
            with self.lock:
                self.active -= 1


def test_a_lone_caller_writes_at_once_on_its_own_thread() -> None:
    """No other caller: one group of one, written by the caller."""
    write = Recorder()
    grouped = GroupCommit(write)
    assert grouped(7) == "written 7"
    assert grouped(8) == "written 8"
    assert write.groups == [[7], [8]]


def test_concurrent_callers_share_groups_and_each_gets_its_own_result() -> None:
    """200 callers on 32 threads: fewer groups than items, one writer at a time, all written
    exactly once, every caller answered with its own item's result."""
    write = Recorder()
    grouped = GroupCommit(write)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(grouped, range(200)))
    assert results == [f"written {item}" for item in range(200)]
    written = [item for group in write.groups for item in group]
    assert sorted(written) == list(range(200))
    assert len(write.groups) < 100
    assert not write.overlapped


def test_a_failing_item_fails_alone() -> None:
    """The group holding a refused item is written again item by item: only its caller sees
    the error."""
    write = Recorder(fail_on=13)
    grouped = GroupCommit(write)

    def call(item: int) -> str:
        try:
            return grouped(item)
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(60)))
    expected = [f"written {item}" for item in range(60)]
    expected[13] = "item 13 is refused"
    assert results == expected
    written = [item for group in write.groups for item in group]
    assert sorted(written) == [item for item in range(60) if item != 13]


def test_the_group_size_is_bounded() -> None:
    """No group holds more than max_group items."""
    write = Recorder()
    grouped = GroupCommit(write, max_group=4)
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(grouped, range(100)))
    assert max(len(group) for group in write.groups) <= 4
    assert sum(len(group) for group in write.groups) == 100


def test_an_interrupted_write_settles_its_group_and_hands_on_the_lead() -> None:
    """A BaseException in the write reaches every caller of that group; later callers still
    get written (the lead is not lost)."""

    def write(items: Sequence[int]) -> list[int]:
        if 0 in items:
            raise KeyboardInterrupt
        return list(items)

    grouped = GroupCommit(write)
    with pytest.raises(KeyboardInterrupt):
        grouped(0)
    assert grouped(5) == 5


def test_callers_on_an_event_loop_share_groups_with_threads() -> None:
    """100 callers on an event loop and 100 on threads at once: each gets its own result,
    every item is written once, one write at a time, and the loop's items share groups (with
    each other and with the threads') instead of a write each."""
    write = Recorder()
    grouped = GroupCommit(write)

    async def on_the_loop() -> list[str]:
        return list(await asyncio.gather(*(grouped.call_async(item) for item in range(100))))

    with ThreadPoolExecutor(16) as pool:
        threads = pool.map(grouped, range(100, 200))
        assert asyncio.run(on_the_loop()) == [f"written {item}" for item in range(100)]
        assert list(threads) == [f"written {item}" for item in range(100, 200)]
    written = [item for group in write.groups for item in group]
    assert sorted(written) == list(range(200))
    assert len([group for group in write.groups if set(group) & set(range(100))]) < 50
    assert not write.overlapped


def test_a_loop_caller_gets_its_own_error_and_the_others_their_results() -> None:
    """A refused item of a loop's caller fails that caller alone; the loop goes on serving."""
    write = Recorder(fail_on=3)
    grouped = GroupCommit(write)

    async def on_the_loop() -> list[str]:
        outcomes = await asyncio.gather(
            *(grouped.call_async(item) for item in range(8)), return_exceptions=True
        )
        return [str(outcome) for outcome in outcomes]

    expected = [f"written {item}" for item in range(8)]
    expected[3] = "item 3 is refused"
    assert asyncio.run(on_the_loop()) == expected


def test_a_cancelled_loop_caller_is_written_and_the_others_answered() -> None:
    """A caller cancelled while it waits: its item is written all the same (it was asked
    for), the caller grouped with it gets its answer, and the next callers are served."""
    started, release = threading.Event(), threading.Event()
    written: list[int] = []

    def write(items: Sequence[int]) -> list[int]:
        if -1 in items:  # a thread's write in progress: the loop's callers gather behind it
            started.set()
            release.wait(5)
        written.extend(items)
        return list(items)

    grouped = GroupCommit(write)

    async def cancel_one() -> list[int]:
        blocking = asyncio.ensure_future(asyncio.to_thread(grouped, -1))
        await asyncio.to_thread(started.wait, 5)
        cancelled = asyncio.ensure_future(grouped.call_async(0))
        kept = asyncio.ensure_future(grouped.call_async(1))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        release.set()
        answers = [await asyncio.wait_for(kept, 5), await blocking]
        assert cancelled.cancelled()
        return [*answers, await grouped.call_async(2), await asyncio.to_thread(grouped, 3)]

    assert asyncio.run(cancel_one()) == [1, -1, 2, 3]
    assert written == [-1, 0, 1, 2, 3]


class Interrupted(BaseException):
    """Not an Exception: what a write may raise that is not its item's error."""


def test_the_own_thread_outlives_what_its_lead_raises() -> None:
    """A write raises on the GroupCommit's own thread while another loop caller waits: that
    caller is written next, and later callers, on the loop or on a thread, still are."""
    started = threading.Event()

    def write(items: Sequence[int]) -> list[int]:
        if 1 in items:
            started.set()
            time.sleep(0.05)
            raise Interrupted
        return list(items)

    grouped = GroupCommit(write)

    async def callers() -> list[int]:
        first = asyncio.ensure_future(grouped.call_async(1))
        await asyncio.to_thread(started.wait, 5)
        second = asyncio.ensure_future(grouped.call_async(2))
        with pytest.raises(Interrupted):
            await first
        return [await asyncio.wait_for(second, 5), await grouped.call_async(3)]

    assert asyncio.run(callers()) == [2, 3]
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(grouped, 4).result(timeout=5) == 4


def test_a_loop_caller_gets_a_stop_iteration_as_a_runtime_error() -> None:
    """A future refuses StopIteration as its exception: the caller gets a RuntimeError that
    names it instead of waiting forever."""

    def write(items: Sequence[int]) -> list[int]:
        raise StopIteration

    grouped = GroupCommit(write)

    async def caller() -> None:
        await asyncio.wait_for(grouped.call_async(1), 5)

    with pytest.raises(RuntimeError, match="StopIteration"):
        asyncio.run(caller())
