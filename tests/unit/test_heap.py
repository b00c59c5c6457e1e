"""Start-up objects are frozen out of the collector while a server or worker runs."""

from __future__ import annotations

import gc

from docqueue.heap import startup_objects_frozen


def test_objects_are_frozen_while_inside_and_handed_back_after() -> None:
    """Inside, what existed on entry is frozen (a collection skips it); after, nothing is."""
    with startup_objects_frozen():
        assert gc.get_freeze_count() > 1000  # the modules of this process, at the least
    assert gc.get_freeze_count() == 0


def test_objects_are_handed_back_when_the_body_fails() -> None:
    """A server that stops with an error leaves no frozen objects behind."""
    try:
        with startup_objects_frozen():
            raise RuntimeError("stopped")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
