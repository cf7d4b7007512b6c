"""MemoryCache: the per-process LRU, bounded in bytes, with single-flight computation.

The legacy cache (legacy-server.md §7.2) was FIFO, unbounded and kept failed reads as empty
entries. This one evicts the least recently *used* entry when a new one would pass the byte
budget, refuses entries larger than a fraction of it (one huge frame must not flush
everything else), and lets concurrent requests for one key compute it once: the others wait
for that result or get the same error. Errors are never stored. Thread-safe; the lock is held
only for bookkeeping, never while computing.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")

ENTRY_OVERHEAD_BYTES = 256
"""Bookkeeping charged per entry on top of its own size (key, dict slot, list node)."""
AUTO_BUDGET_FRACTION = 1 / 16
AUTO_BUDGET_MIN_BYTES = 512 << 20
AUTO_BUDGET_MAX_BYTES = 4 << 30


def automatic_budget_bytes() -> int:
    """1/16 of the machine's memory, kept between 512 MiB and 4 GiB, per worker process.

    Enough for a few 16M frames (90 MB each with the mask) and hundreds of reduced views; 16
    busy workers then hold at most all of a node's memory only on small machines, where
    ``memory_budget_bytes`` should be set explicitly.
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
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

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The held value, else the result of ``compute()``, run once however many ask at once."""
        with self._lock:
            value = self._lookup(key)
            if value is not None:
                return value
            flight = self._flights.get(key)
            is_owner = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                self.stats.waits += 1
        if not is_owner:
            return self._wait(flight)
        try:
            value = compute()
            size = self._size_of(value) + ENTRY_OVERHEAD_BYTES
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.value = value
            with self._lock:
                self._store(key, value, size)
        finally:  # whatever happened, waiters are released and the key can be computed again
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return value

    @staticmethod
    def _wait(flight: _Flight[V]) -> V:
        flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.value is not None
        return flight.value

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
