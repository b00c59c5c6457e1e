"""Group commit: writes asked for at the same moment by many threads share one transaction.

A busy API has many submissions in flight, each on a thread of its own. Committed one by one,
each pays for taking SQLite's write lock, and with `synchronous=FULL` for a sync of the log, and
the threads queue up on SQLite's busy handler, which sleeps for longer and longer steps. Here the
first caller becomes the leader and writes whatever has gathered meanwhile in one transaction;
the others wait for their own outcome. When the leader is done, the oldest waiting caller leads
the next group, so that no caller writes for others indefinitely. A caller alone writes at once,
on its own thread, with nothing to wait for.

Each item keeps its own outcome: when the shared transaction fails, every item of the group is
written again alone, so an error (a full queue, say) reaches only the caller it belongs to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    """One caller's item, and its outcome once written."""

    __slots__ = ("error", "item", "result", "settled", "wake")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        #: True once `result` or `error` holds the outcome.
        self.settled = False
        #: Set when the outcome is known, or when this caller is to lead the next group.
        self.wake = threading.Event()

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
    threads at once."""

    def __init__(
        self, write: Callable[[Sequence[Item]], list[Result]], *, max_group: int = 500
    ) -> None:
        self._write = write
        self._max_group = max_group
        self._lock = threading.Lock()
        self._waiting: list[_Slot[Item, Result]] = []
        self._leading = False

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

    def _lead(self) -> None:
        """Write the oldest waiting items, then hand the lead to the next waiting caller."""
        with self._lock:
            group = self._waiting[: self._max_group]
            del self._waiting[: self._max_group]
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
                    self._waiting[0].wake.set()
                else:
                    self._leading = False
            for slot in group:
                slot.wake.set()

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
