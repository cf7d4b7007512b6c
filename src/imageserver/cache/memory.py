"""MemoryCache: the per-process LRU, bounded in bytes, with single-flight computation.

The legacy cache (legacy-server.md §7.2) was FIFO, unbounded and kept failed reads as empty
entries. This one evicts the least recently *used* entry when a new one would pass the byte
budget, refuses entries larger than a fraction of it (one huge frame must not flush
everything else), and lets concurrent requests for one key compute it once: the others wait
for that result. Errors are never stored. Thread-safe; the lock is held only for
bookkeeping, never while computing.

Whose error is it? Waiters share the owner's *key*, not its request: the computation may
also read the owner's frame number, size or deadline (a file's frame size is learnt by
decoding the first requester's frame). So a waiter re-raises the owner's error only when it
is a `FrameError` about the files the key names (missing, unreadable, unknown format,
corrupt, too large), which every waiter would meet the same way. Anything else — a
`FrameRangeError` or `RequestError` (the owner's input), another `ImageServerError` (a
deadline, an unavailable service), a foreign exception (MemoryError, a bug) — may be the
owner's alone, so the waiters compute for themselves: one becomes the new owner, the others
wait for it. An allow-list rather than a deny-list, so that a new kind of error is never
handed to a request it does not belong to; the cost is at most one computation per waiter
when such errors repeat.

Memory goes back as well as in: `shrink` drops the least recently used entries down to a
given size (a worker calls it after an idle spell, see `CachedRenderer.release_idle`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from imageserver.errors import FrameError, FrameRangeError

V = TypeVar("V")

ENTRY_OVERHEAD_BYTES = 1536
"""Bookkeeping charged per entry on top of its own size: its key (text, digest, object), the
dict node and the entry tuple. An image key of a file with a 40-character path measures
~1.1 KB; longer paths and labels make it longer."""
AUTO_BUDGET_FRACTION = 1 / 32
AUTO_BUDGET_MIN_BYTES = 512 << 20
AUTO_BUDGET_MAX_BYTES = 2 << 30


def machine_memory_bytes() -> int | None:
    """Physical memory of the machine; None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def automatic_budget_bytes() -> int:
    """1/32 of the machine's memory, kept between 512 MiB and 2 GiB, per worker process.

    Every worker (up to ``max_workers``, 64 by default) may fill its budget, so the budget is
    sized for the workers that are *busy* at once: an idle worker shrinks its cache to a
    sixteenth (`CachedRenderer.release_idle`). With 1/32, sixteen busy workers hold at most
    half of the machine (1/16 let sixteen hold all of it). 512 MiB keeps a 16M frame (90 MB
    with its mask, under the quarter-of-budget entry limit) and its views and tiles; above 2
    GiB one user's hit rate hardly grows. Small machines, or many busy users, should set
    ``memory_budget_bytes``.
    """
    total = machine_memory_bytes()
    if total is None:
        return AUTO_BUDGET_MIN_BYTES
    return int(min(max(total * AUTO_BUDGET_FRACTION, AUTO_BUDGET_MIN_BYTES), AUTO_BUDGET_MAX_BYTES))


@dataclass
class CacheStats:
    """Counters since start; ``waits`` are requests served by another thread's computation."""

    hits: int = 0
    misses: int = 0
    waits: int = 0
    evictions: int = 0
    too_large: int = 0
    retries: int = 0
    """Waiters that computed again because the owner's error was not theirs to share."""
    shrunk: int = 0
    """Entries dropped by `MemoryCache.shrink`."""


def is_shared_error(error: BaseException) -> bool:
    """Whether every waiter of a key would have met ``error`` too: see the module docstring."""
    return isinstance(error, FrameError) and not isinstance(error, FrameRangeError)


class _Flight(Generic[V]):
    """One computation in progress; waiters block on ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: V | None = None
        self.error: BaseException | None = None


class MemoryCache(Generic[V]):
    """An LRU of values whose sizes ``size_of`` reports, within ``max_bytes`` in total."""

    def __init__(
        self,
        max_bytes: int,
        size_of: Callable[[V], int],
        *,
        max_entry_fraction: float = 0.25,
    ) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.max_entry_bytes = int(self.max_bytes * max_entry_fraction)
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._flights: dict[Hashable, _Flight[V]] = {}
        self._nbytes = 0
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @property
    def nbytes(self) -> int:
        """Bytes charged for the entries held now (never above ``max_bytes``)."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is held, without counting a hit or refreshing it."""
        return key in self._entries

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            return self._lookup(key)

    def put(self, key: Hashable, value: V) -> bool:
        """Keep ``value`` (evicting the least recently used); False if it is too large."""
        size = self._size_of(value) + ENTRY_OVERHEAD_BYTES
        with self._lock:
            return self._store(key, value, size)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._nbytes -= entry[1]

    def get_or_compute(
        self,
        key: Hashable,
        compute: Callable[[], V],
        keep: Callable[[V], bool] | None = None,
    ) -> V:
        """The held value, else the result of ``compute()``, run once however many ask at once.

        A waiter gets the owner's error only if `is_shared_error`; else it computes itself.
        ``keep(value)`` false: the value goes to those waiting now and is not stored.
        """
        while True:
            with self._lock:
                value = self._lookup(key)
                if value is not None:
                    return value
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    break
                self.stats.waits += 1
            flight.done.wait()
            if flight.error is None:
                assert flight.value is not None
                return flight.value
            if is_shared_error(flight.error):
                raise flight.error
            with self._lock:
                self.stats.retries += 1
        try:
            value = compute()
            is_kept = keep is None or keep(value)
            size = self._size_of(value) + ENTRY_OVERHEAD_BYTES if is_kept else 0
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.value = value
            if is_kept:
                with self._lock:
                    self._store(key, value, size)
        finally:  # whatever happened, waiters are released and the key can be computed again
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return value

    def shrink(self, to_bytes: int) -> int:
        """Drop least recently used entries until at most ``to_bytes`` are held; bytes freed.

        The budget stays as it was: a busy worker grows back to it, an idle one holds little.
        """
        freed = 0
        with self._lock:
            while self._entries and self._nbytes > max(0, to_bytes):
                _, (_, size) = self._entries.popitem(last=False)
                self._nbytes -= size
                freed += size
                self.stats.shrunk += 1
        return freed

    def _lookup(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry[0]

    def _store(self, key: Hashable, value: V, size: int) -> bool:
        old = self._entries.pop(key, None)
        if old is not None:
            self._nbytes -= old[1]
        if size > self.max_entry_bytes:
            self.stats.too_large += 1
            return False
        while self._entries and self._nbytes + size > self.max_bytes:
            _, (_, evicted_size) = self._entries.popitem(last=False)
            self._nbytes -= evicted_size
            self.stats.evictions += 1
        self._entries[key] = (value, size)
        self._nbytes += size
        return True
