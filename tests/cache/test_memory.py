"""MemoryCache: the contract, LRU order, the byte bound, the entry-size limit, whose error a
waiter may receive, shrinking, and the automatic budget."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from cache_contract import CacheTests, Counter, key_of, run_together
from cache_samples import assert_same_view, make_view

from imageserver.cache import memory
from imageserver.cache.keys import CacheKey, FileIdentity, Scope, cache_key
from imageserver.cache.memory import (
    ENTRY_OVERHEAD_BYTES,
    MemoryCache,
    automatic_budget_bytes,
    is_shared_error,
)
from imageserver.errors import (
    CorruptFrameError,
    DeadlineError,
    FileMissingError,
    FrameRangeError,
    FrameTooLargeError,
    RequestError,
    UnknownFormatError,
    all_error_classes,
)
from imageserver.imaging.geometry import plan_view
from imageserver.render import Look, ReducedView


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
    cache = sized_cache(6000)
    for name in ("a", "b", "c"):
        cache.put(key_of(name), entry(2000))
    assert cache.get(key_of("a")) is not None  # a is now newer than b and c
    cache.put(key_of("d"), entry(2000))
    assert key_of("b") not in cache
    assert [name in cache for name in map(key_of, "acd")] == [True, True, True]
    assert cache.stats.evictions == 1


def test_the_byte_bound_holds_under_a_stream_of_distinct_entries() -> None:
    cache = sized_cache(50_000, fraction=0.25)
    sizes = [1600 + (i * 7919) % 11_000 for i in range(2000)]
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
    """A TypeError is no verdict on the key: each waiter tries in turn, and none hangs."""

    def broken_size(_value: object) -> int:
        raise TypeError("size_of cannot measure this value")

    cache: MemoryCache[Any] = MemoryCache(10_000, broken_size)
    compute = Counter(make_view(9), work_s=0.2)
    results = run_together([lambda: cache.get_or_compute(key_of("s"), compute)] * 4)
    assert all(isinstance(r, TypeError) and "cannot measure" in str(r) for r in results)
    assert compute.calls == 4  # one after the other, each waiter as the new owner


class OwnInput:
    """A requester's own computation of a shared key: the first fails with ``error`` once
    every other requester is waiting for it; the others succeed (thread-safe)."""

    def __init__(self, cache: MemoryCache[Any], error: BaseException, n_waiters: int) -> None:
        self.cache = cache
        self.error = error
        self.n_waiters = n_waiters
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def compute(self, who: str) -> ReducedView:
        with self._lock:
            self.calls.append(who)
            is_first = len(self.calls) == 1
        if is_first:
            deadline = time.monotonic() + 10
            while self.cache.stats.waits < self.n_waiters and time.monotonic() < deadline:
                time.sleep(0.001)
            raise self.error
        time.sleep(0.05)
        return make_view(11)

    def requester(self, key: CacheKey, who: str) -> Callable[[], ReducedView]:
        """A request for ``key`` whose computation is its own."""
        return lambda: self.cache.get_or_compute(key, lambda: self.compute(who))


REQUESTERS_OWN_ERRORS = [
    FrameRangeError("/data/x.cbf: frame 2 is outside 1..1 (a single-frame file)"),
    RequestError("xsize 20000 is above the limit of 10000 pixels"),
    DeadlineError("the request ran past its deadline"),
    MemoryError(),
    RuntimeError("a bug in one request's path"),
]


@pytest.mark.parametrize("error", REQUESTERS_OWN_ERRORS, ids=lambda e: type(e).__name__)
def test_a_waiter_never_receives_an_error_of_the_owners_own_request(error: Exception) -> None:
    """Concurrent requests share a key but not their input: each gets its own answer."""
    cache: MemoryCache[Any] = MemoryCache(1 << 20, view_size)
    own = OwnInput(cache, error, n_waiters=5)
    results = run_together([own.requester(key_of("dims"), f"r{i}") for i in range(6)])
    owner = int(own.calls[0][1:])
    assert results[owner] is error
    waiters = [result for i, result in enumerate(results) if i != owner]
    for result in waiters:
        assert_same_view(result, make_view(11))
    assert len(own.calls) == 2  # one waiter took over; the rest waited for it
    assert cache.stats.retries == 5


@pytest.mark.parametrize(
    "error",
    [
        CorruptFrameError("/data/x.cbf: truncated CBF: 10 of 100 bytes of binary data"),
        FileMissingError("/data/x.cbf: not found"),
        UnknownFormatError("/data/x.cbf: unknown format"),
        FrameTooLargeError("/data/x.cbf: inflates to more than 512 MiB"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_about_the_file_reaches_every_waiter_computed_once(error: Exception) -> None:
    cache: MemoryCache[Any] = MemoryCache(1 << 20, view_size)
    own = OwnInput(cache, error, n_waiters=5)
    results = run_together([own.requester(key_of("f"), f"r{i}") for i in range(6)])
    assert all(result is error for result in results)
    assert len(own.calls) == 1 and cache.stats.retries == 0


def test_which_errors_are_shared_with_waiters() -> None:
    """Only a FrameError about the file; the whole tree is sorted, so new classes are seen."""
    shared = {cls.__name__ for cls in all_error_classes() if is_shared_error(cls())}
    assert shared == {
        "FrameError",
        "FileMissingError",
        "FileAccessError",
        "UnknownFormatError",
        "CorruptFrameError",
        "MissingMetadataError",
        "FrameTooLargeError",
        "AnalysisError",  # the frame itself refuses spot finding, for every waiter alike
    }
    assert not is_shared_error(MemoryError()) and not is_shared_error(KeyboardInterrupt())


def test_a_zero_budget_keeps_nothing_but_still_coalesces() -> None:
    cache: MemoryCache[Any] = MemoryCache(0, view_size)
    compute = Counter(make_view(8), work_s=0.2)
    results = run_together([lambda: cache.get_or_compute(key_of("z"), compute)] * 4)
    assert compute.calls == 1 and len({id(r) for r in results}) == 1
    assert cache.get(key_of("z")) is None and cache.nbytes == 0


def test_discard_forgets_an_entry_and_its_bytes() -> None:
    cache = sized_cache(10_000)
    cache.put(key_of("a"), entry(2000))
    cache.discard(key_of("a"))
    assert cache.get(key_of("a")) is None and cache.nbytes == 0


def test_shrink_keeps_the_most_recently_used_within_the_size_and_the_budget_stays() -> None:
    cache = sized_cache(20_000)
    for name in "abcdefgh":
        cache.put(key_of(name), entry(2000))
    assert cache.get(key_of("a")) is not None  # the most recently used now
    assert cache.shrink(5000) == 12_000
    assert cache.nbytes == 4000 and [n for n in "abcdefgh" if key_of(n) in cache] == ["a", "h"]
    assert cache.stats.shrunk == 6 and cache.stats.evictions == 0
    for name in "ijklmnop":  # a busy worker grows back to its budget
        cache.put(key_of(name), entry(2000))
    assert cache.nbytes == 20_000
    assert cache.shrink(0) == 20_000 and len(cache) == 0


def test_the_entry_overhead_covers_a_real_key_and_its_bookkeeping() -> None:
    """Measured with tracemalloc: an image key, its digest and the cache's structures."""
    cache: MemoryCache[Any] = MemoryCache(1 << 30, lambda _value: 0)
    file = FileIdentity("~5000/beamline/user/sample_12_master.h5", 123456789, 17 << 56, 17 << 56)
    other = FileIdentity("~5000/beamline/user/sample_12_data_000003.h5", 1 << 30, 1 << 60, 1 << 60)
    scope = Scope(gid=61001, home="/data/esaf61001", home_tag="5000")
    values = [object() for _ in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, value in enumerate(values):
            view = plan_view(4148, 4362, xsize=64 + i, ysize=None, zoom=4, segcol=1, segrow=2)
            look = Look(contrast=i, colormap="heat", label="sample 12", label_height_px=20)
            key = cache_key(scope, file, frame=1, frame_files=(other,), view=view, look=look)
            key.redis_name("imageserver")  # the digest is kept once computed
            cache.put(key, value)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(values)
    finally:
        tracemalloc.stop()
    assert 400 < per_entry <= ENTRY_OVERHEAD_BYTES


def meminfo_total_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def expected_budget(total: int) -> int:
    return int(min(max(total / 32, 512 << 20), 2 << 30))


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="needs /proc/meminfo")
def test_the_automatic_budget_is_a_32nd_of_this_machines_memory() -> None:
    total = meminfo_total_bytes()
    assert automatic_budget_bytes() == pytest.approx(expected_budget(total), rel=0.01)


@pytest.mark.parametrize("gib", [1, 8, 24, 48, 96, 512])
def test_the_automatic_budget_rule_from_small_to_large_machines(
    gib: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule itself (pure arithmetic), including both ends of the clamp."""
    monkeypatch.setattr(memory, "machine_memory_bytes", lambda: gib << 30)
    assert automatic_budget_bytes() == expected_budget(gib << 30)
    monkeypatch.setattr(memory, "machine_memory_bytes", lambda: None)
    assert automatic_budget_bytes() == 512 << 20
