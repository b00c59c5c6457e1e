"""Group commit: writes asked for at the same moment by many callers share one transaction.

A busy API or application has many submissions in flight at once. Committed one by one, each
pays for taking SQLite's write lock, and with `synchronous=FULL` for a sync of the log, and
the writers queue up on SQLite's busy handler, which sleeps for longer and longer steps. Here the
first caller becomes the leader and writes whatever has gathered meanwhile in one transaction;
the others wait for their own outcome. When the leader is done, the oldest waiting caller leads
the next group, so that no caller writes for others indefinitely. A caller alone writes at once,
on its own thread, with nothing to wait for.

Each item keeps its own outcome: when the shared transaction fails, every item of the group is
written again alone, so an error (a full queue, say) reaches only the caller it belongs to.

Callers on an asyncio event loop (the API's submissions) await `call_async` instead: a loop must
not block on a write, and a hop to a thread pool and back for each of them costs a busy API more
than the write itself. Their items join the same groups; a thread of the GroupCommit's own
leads when the oldest waiting item is theirs, and each loop gets the outcomes of a group in one
wake-up.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    """One caller's item, and its outcome once written."""

    __slots__ = ("error", "future", "item", "result", "settled", "wake")

    def __init__(self, item: Item, future: asyncio.Future[Result] | None = None) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        #: True once `result` or `error` holds the outcome.
        self.settled = False
        #: A thread's caller: set when the outcome is known, or when it is to lead the next group.
        self.wake = threading.Event()
        #: An event loop's caller: done once the outcome is known (it never leads).
        self.future = future

    def settle(self, result: Result | None, error: BaseException | None = None) -> None:
        """Record the outcome."""
        self.result, self.error, self.settled = result, error, True

    def outcome(self) -> Result:
        """The result, or the error raised again in the caller's thread."""
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[Item, Result]):
    """Run `write(items) -> results` (one transaction, results in order) for callers of many
    threads and event loops at once."""

    def __init__(
        self, write: Callable[[Sequence[Item]], list[Result]], *, max_group: int = 500
    ) -> None:
        self._write = write
        self._max_group = max_group
        self._lock = threading.Lock()
        self._waiting: list[_Slot[Item, Result]] = []
        self._leading = False
        #: Set to make the own thread lead the next group; the thread starts on first need.
        self._lead_here = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, item: Item) -> Result:
        """Write `item`, alone or with those of other threads; its own result or error."""
        slot: _Slot[Item, Result] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            follow = self._leading
            self._leading = True
        if follow:
            slot.wake.wait()
        if not slot.settled:  # the first caller, or the one asked to lead next
            self._lead()
        return slot.outcome()

    async def call_async(self, item: Item) -> Result:
        """`self(item)` for a caller on an event loop, which goes on serving meanwhile. Once
        asked for, the item is written even when the caller is cancelled meanwhile."""
        slot: _Slot[Item, Result] = _Slot(item, asyncio.get_running_loop().create_future())
        with self._lock:
            self._waiting.append(slot)
            follow = self._leading
            self._leading = True
        if not follow:
            self._hand_lead(slot)
        assert slot.future is not None
        return await slot.future

    def _lead(self) -> None:
        """Write the oldest waiting items, then hand the lead to the next waiting caller."""
        with self._lock:
            group = self._waiting[: self._max_group]
            del self._waiting[: self._max_group]
        following: _Slot[Item, Result] | None = None
        try:
            self._commit(group)
        except BaseException as exc:  # interrupted: what is not settled is not known written
            for slot in group:
                if not slot.settled:
                    slot.settle(None, exc)
            raise
        finally:
            with self._lock:
                if self._waiting:
                    following = self._waiting[0]
                else:
                    self._leading = False
            _answer(group)
            if following is not None:
                self._hand_lead(following)

    def _hand_lead(self, slot: _Slot[Item, Result]) -> None:
        """Make the caller of `slot` lead the next group: its own thread, or for a caller on
        an event loop, the GroupCommit's thread."""
        if slot.future is None:
            slot.wake.set()
            return
        if self._thread is None or not self._thread.is_alive():  # not yet, or not in a fork
            self._thread = threading.Thread(
                target=self._lead_for_loops, name="group-commit", daemon=True
            )
            self._thread.start()
        self._lead_here.set()

    def _lead_for_loops(self) -> None:
        """The own thread: lead a group whenever asked (a caller on an event loop is oldest).

        What a lead raises has reached its group's callers already, and the lead has been
        handed on, perhaps to this thread again: it must live on, or the callers after it
        would wait forever.
        """
        while True:
            self._lead_here.wait()
            self._lead_here.clear()
            with suppress(BaseException):
                self._lead()

    def _commit(self, group: list[_Slot[Item, Result]]) -> None:
        """One transaction for the group; when it fails, one for each item."""
        try:
            results = self._write([slot.item for slot in group])
        except Exception as exc:
            if len(group) == 1:
                group[0].settle(None, exc)
                return
            for slot in group:
                self._commit([slot])
        else:
            for slot, result in zip(group, results, strict=True):
                slot.settle(result)


def _answer(group: list[_Slot[Item, Result]]) -> None:
    """Wake the group's callers: threads one by one, each event loop once for all its own."""
    by_loop: defaultdict[asyncio.AbstractEventLoop, list[_Slot[Item, Result]]] = defaultdict(list)
    for slot in group:
        if slot.future is None:
            slot.wake.set()
        else:
            by_loop[slot.future.get_loop()].append(slot)
    for loop, slots in by_loop.items():
        with suppress(RuntimeError):  # the loop was closed meanwhile: nobody waits there now
            loop.call_soon_threadsafe(_resolve, slots)


def _resolve(slots: list[_Slot[Item, Result]]) -> None:
    """On a caller's event loop: hand each waiting caller its outcome."""
    for slot in slots:
        assert slot.future is not None
        if slot.future.done():  # the caller was cancelled meanwhile
            continue
        if isinstance(slot.error, StopIteration):  # a future refuses it as an exception
            slot.future.set_exception(RuntimeError(f"the write raised {slot.error!r}"))
        elif slot.error is not None:
            slot.future.set_exception(slot.error)
        else:
            slot.future.set_result(slot.result)  # type: ignore[arg-type]
