"""Keep large frame buffers on the heap so each new frame does not pay for fresh page faults.

glibc serves allocations above M_MMAP_THRESHOLD with a new mmap and unmaps them on free, so
every decoded 16M frame (72 MB) touches 17,000 new pages: about 9 ms of the 25 ms decode on
this project's reference machine. Raising the threshold and the trim threshold lets freed
frame buffers be reused, which cuts a cold decode to about 16 ms.

That alone only helps the main thread. glibc gives other threads arenas of their own, whose
heaps grow to at most 64 MB, and serves anything larger with a fresh mmap whatever the
thresholds: every frame decoded in a worker's pool thread paid the fresh pages again (10 ms
on that machine, 30–90 ms on a virtual machine that backs new pages lazily). One arena for
all threads (M_ARENA_MAX 1) lets pool threads reuse freed frames too; the threads are few,
and Python objects come from pymalloc, so the shared arena's lock is rarely contended.

The price: glibc gives nothing back. Memory freed by the cache's evictions, or by a request
that needed a large working set, stays in the heap for the next frame (measured: a worker
that dropped its whole 256 MiB cache stayed at its peak resident size; glibc's default
thresholds returned 53 of its 284 MiB, only what lay at the top of the heap). A lower trim
threshold would not help either, since freed views leave holes all over the heap.
`release_free_memory` (glibc's ``malloc_trim(0)``) returns every free page, holes included;
it holds the arena's lock while it works (about 0.3 ms per MiB on a virtual machine), so a
worker calls it after an idle spell, not per request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_BYTES = 1 << 30
_TRIM_THRESHOLD_BYTES = (1 << 31) - 1

log = logging.getLogger(__name__)
_is_tuned = False


def tune_allocator() -> bool:
    """Ask glibc to recycle big buffers; a no-op (False) where there is no glibc mallopt."""
    global _is_tuned
    if _is_tuned:
        return True
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        log.debug("no mallopt here; keeping the default allocator")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES),
        (_M_ARENA_MAX, 1),  # before any thread allocates: see the module docstring
    )
    ok = all([mallopt(option, value) for option, value in settings])
    _is_tuned = ok
    return ok


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc ``malloc_trim(0)``); False without it.

    Pages still in use stay; freed ones come back zeroed on next use, at the page-fault cost
    the tuning above avoids, which is why this is for idle spells.
    """
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True


def resident_bytes() -> int:
    """This process's resident set size (RSS) from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        log.debug("cannot load %s", name)
        return None
