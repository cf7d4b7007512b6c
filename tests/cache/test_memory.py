"""MemoryCache: the contract, plus LRU order, the byte bound and the entry-size limit."""

from __future__ import annotations

from typing import Any

import pytest
from cache_contract import CacheTests, Counter, key_of, run_together
from cache_samples import make_view

from imageserver.cache.memory import ENTRY_OVERHEAD_BYTES, MemoryCache, automatic_budget_bytes
from imageserver.render import ReducedView


def view_size(view: ReducedView) -> int:
    return view.nbytes


class TestMemoryCache(CacheTests):
    @pytest.fixture
    def cache(self) -> MemoryCache[ReducedView]:
        return MemoryCache(1 << 20, view_size)


def sized_cache(max_bytes: int, fraction: float = 1.0) -> MemoryCache[bytes]:
    return MemoryCache(max_bytes, len, max_entry_fraction=fraction)


def entry(n_bytes: int) -> bytes:
    """A value charged exactly ``n_bytes`` with its overhead."""
    return b"x" * (n_bytes - ENTRY_OVERHEAD_BYTES)


def test_a_hit_makes_an_entry_the_most_recently_used() -> None:
    cache = sized_cache(3000)
    for name in ("a", "b", "c"):
        cache.put(key_of(name), entry(1000))
    assert cache.get(key_of("a")) is not None  # a is now newer than b and c
    cache.put(key_of("d"), entry(1000))
    assert key_of("b") not in cache
    assert [name in cache for name in map(key_of, "acd")] == [True, True, True]
    assert cache.stats.evictions == 1


def test_the_byte_bound_holds_under_a_stream_of_distinct_entries() -> None:
    cache = sized_cache(50_000, fraction=0.25)
    sizes = [700 + (i * 7919) % 11_000 for i in range(2000)]
    for i, size in enumerate(sizes):
        cache.put(key_of(f"stream-{i}"), entry(size))
        assert cache.nbytes <= 50_000
    held = [i for i in range(len(sizes)) if key_of(f"stream-{i}") in cache]
    assert cache.nbytes == sum(sizes[i] for i in held)
    newest_kept = [i for i in range(held[0], len(sizes)) if sizes[i] <= 12_500]
    assert held == newest_kept  # the newest entries that fit, none skipped
    assert cache.stats.evictions > 1500
    assert cache.stats.too_large == sum(size > 12_500 for size in sizes)


def test_an_entry_larger_than_the_fraction_is_returned_but_not_kept() -> None:
    cache = sized_cache(10_000, fraction=0.25)
    cache.put(key_of("small"), entry(2000))
    calls = []
    big = entry(3000)

    def make_big() -> bytes:
        calls.append(1)
        return big

    assert cache.get_or_compute(key_of("big"), make_big) is big
    assert cache.get_or_compute(key_of("big"), make_big) is big
    assert len(calls) == 2
    assert key_of("big") not in cache and key_of("small") in cache
    assert cache.stats.too_large == 2


def test_concurrent_waiters_get_an_unkept_value_too() -> None:
    cache: MemoryCache[Any] = MemoryCache(10_000, view_size, max_entry_fraction=0.1)
    compute = Counter(make_view(7), work_s=0.2)
    assert make_view(7).nbytes > 1000
    results = run_together([lambda: cache.get_or_compute(key_of("w"), compute)] * 5)
    assert compute.calls == 1
    assert all(result is results[0] for result in results)
    assert len(cache) == 0


def test_a_failure_after_computing_still_releases_the_waiters() -> None:
    def broken_size(_value: object) -> int:
        raise TypeError("size_of cannot measure this value")

    cache: MemoryCache[Any] = MemoryCache(10_000, broken_size)
    compute = Counter(make_view(9), work_s=0.2)
    results = run_together([lambda: cache.get_or_compute(key_of("s"), compute)] * 4)
    assert all(isinstance(r, TypeError) and "cannot measure" in str(r) for r in results)
    assert compute.calls == 1


def test_a_zero_budget_keeps_nothing_but_still_coalesces() -> None:
    cache: MemoryCache[Any] = MemoryCache(0, view_size)
    compute = Counter(make_view(8), work_s=0.2)
    results = run_together([lambda: cache.get_or_compute(key_of("z"), compute)] * 4)
    assert compute.calls == 1 and len({id(r) for r in results}) == 1
    assert cache.get(key_of("z")) is None and cache.nbytes == 0


def test_discard_forgets_an_entry_and_its_bytes() -> None:
    cache = sized_cache(10_000)
    cache.put(key_of("a"), entry(1000))
    cache.discard(key_of("a"))
    assert cache.get(key_of("a")) is None and cache.nbytes == 0


def test_the_automatic_budget_follows_the_machine_memory() -> None:
    budget = automatic_budget_bytes()
    assert 512 << 20 <= budget <= 4 << 30
