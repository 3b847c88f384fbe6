"""Memory during a sync: the garbage collector's pace, and glibc's malloc arenas."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8
"""mallopt's parameter number for the arena cap (glibc's malloc.h)."""


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the collector's first threshold for the run, then put it back.

    A sync allocates millions of short-lived objects (parsed pages, rows) and next to no
    cycles; the default threshold makes Python rescan everything alive over and over
    (bench/results/log.md: no-change re-sync 10.6 s -> 6.7 s, full sync 16.7 s -> 13.1 s).
    """
    previous = gc.get_threshold()
    gc.freeze()  # what exists before the run is not rescanned during it
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


def fewer_malloc_arenas() -> None:
    """Cap glibc's malloc arenas at MALLOC_ARENAS for the process, as `MALLOC_ARENA_MAX=2`
    would, before the sync starts its threads.

    glibc gives threads that allocate at the same time arenas of their own (up to eight per
    core), and what is freed in one arena is not reused for another: a sync's batch workers
    and page prefetchers left about 10 MiB more peak RSS at batches of 100,000, for no gain
    in speed (bench/results/log.md). An operator's own MALLOC_ARENA_MAX is left alone, and
    where the C library is not glibc nothing happens.
    """
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # musl's is a no-op
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
