"""The process's pool for splitting one large image over the cores.

One pool per process, made on first use so that a forking parent (the zygote) holds no
threads, and forgotten in a forked child, which has none of its parent's threads. Used by
the reduction kernels (`imaging.reduce`) and by whole-frame decodes (`formats.base`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
"""Threads that share one large image (the calling thread plus the pool)."""

RowWork = Callable[[int, int], None]


def run_blocks(work: RowWork, blocks: list[tuple[int, int]]) -> None:
    """Call work(start, stop) for every block: the first in this thread, the rest on the pool."""
    futures = [_thread_pool().submit(work, start, stop) for start, stop in blocks[1:]]
    try:
        work(*blocks[0])
    finally:
        for future in futures:
            future.result()


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="reduce")
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
