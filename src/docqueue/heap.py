"""The memory of long-running processes: short collector pauses, freed memory kept for reuse."""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: mallopt(3) parameters of glibc.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Free memory at the top of the heap that malloc keeps instead of giving it back to the kernel.
RETAINED_HEAP = 64 * 1024 * 1024
#: Allocations this large or larger get pages of their own, handed back when freed (32 MiB is
#: the most glibc takes).
OWN_PAGES_FROM = 32 * 1024 * 1024


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Leave what exists now (modules, the app, engines) out of collections until the end.

    A full collection walks every object a process holds: with FastAPI, Pydantic and SQLAlchemy
    loaded that takes 40-50 ms, in which the process answers nothing; and when it falls inside a
    write transaction on SQLite, every writer on the machine waits as long. Objects made at
    start-up live as long as the server or worker, so walking them finds nothing: frozen, they
    are skipped, and a collection walks only what requests and jobs have made since. At the end
    they are handed back to the collector (a process may start a server more than once).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def retain_freed_memory() -> bool:
    """Have malloc keep memory a job freed for the next job, up to `RETAINED_HEAP`.

    glibc gives the free top of its heap back to the kernel once it passes 128 KiB and maps
    large blocks on their own: a worker child that reads PDF after PDF then has its memory
    handed back and faulted in again for every page. PDFium's text extraction ran 10-20% slower
    that way, in 800 page faults per 20-page document. With this, memory stays at what the
    largest recent job used (flat over thousands of jobs) and is reused. Returns False where
    malloc is not glibc's (nothing is changed there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    trimmed = mallopt(_M_TRIM_THRESHOLD, RETAINED_HEAP)
    mapped = mallopt(_M_MMAP_THRESHOLD, OWN_PAGES_FROM)
    return bool(trimmed and mapped)
