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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

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
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in %s; keeping the default allocator", name)
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
