"""Start-up objects are frozen out of the collector while a server or worker runs; worker
children keep freed memory for reuse."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

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


#: Allocates 200 blocks of 64 KiB, touches and frees them, five times over, and prints the page
#: faults of the last four rounds (the first one faults the memory in).
CHURN = """
import ctypes, resource, sys
from docqueue.heap import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def churn():
    blocks = [libc.malloc(64 * 1024) for _ in range(200)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in reversed(blocks):
        libc.free(block)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn_faults(mode: str) -> int:
    """Page faults of CHURN's last four rounds in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    """glibc hands most of the 12.5 MiB freed at the top of its heap back and faults it in again
    on every round (about 2,400 pages a round here); kept, the rounds reuse it."""
    assert _churn_faults("default") > 4 * 1000
    assert _churn_faults("retain") < 100
