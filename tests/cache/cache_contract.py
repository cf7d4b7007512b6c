"""CacheTests: the behaviour every cache tier promises, written once (zarr's StoreTests).

A subclass supplies a ``cache`` fixture (a MemoryCache, SharedCache or TieredCache of
ReducedViews) and says whether concurrent *failing* computations are coalesced: in one
process a failure about the file (here a corrupt frame) reaches every waiter; across
processes each waiter computes again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from cache_samples import assert_same_view, make_view

from imageserver.cache.keys import CacheKey, FileIdentity, Scope, cache_key
from imageserver.errors import CorruptFrameError
from imageserver.render import ReducedView

SCOPE = Scope(gid=61001, home="/data/esaf61001", home_tag="5000")
OTHER_SCOPE = Scope(gid=61002, home="/data/esaf61002", home_tag="5001")


def key_of(name: str, frame: int = 1, scope: Scope = SCOPE) -> CacheKey:
    file = FileIdentity(path=f"~5000/{name}", size_bytes=100, mtime_ns=1, ctime_ns=1)
    return cache_key(scope, file, frame=frame)


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Start every call at once in its own thread; each result or raised exception, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


class Counter:
    """A computation that counts its calls (thread-safe) and takes ``work_s`` to finish."""

    def __init__(self, value: ReducedView | None = None, work_s: float = 0.0) -> None:
        self.value = value
        self.work_s = work_s
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> ReducedView:
        with self._lock:
            self.calls += 1
        time.sleep(self.work_s)  # the simulated decode
        if self.value is None:
            raise CorruptFrameError("/synthetic/bad: frame 1 cannot be decoded")
        return self.value


class CacheTests:
    failures_are_shared: ClassVar[bool] = True

    def test_a_missing_key_is_a_miss(self, cache: Any) -> None:
        assert cache.get(key_of("absent")) is None

    def test_what_is_put_comes_back_with_the_same_pixels_stats_and_meta(self, cache: Any) -> None:
        view = make_view(1)
        cache.put(key_of("a"), view)
        assert_same_view(cache.get(key_of("a")), view)

    def test_put_replaces_the_value(self, cache: Any) -> None:
        cache.put(key_of("a"), make_view(1))
        cache.put(key_of("a"), make_view(2))
        assert_same_view(cache.get(key_of("a")), make_view(2))

    def test_keys_differ_by_frame_file_and_esaf(self, cache: Any) -> None:
        cache.put(key_of("a", frame=1), make_view(1))
        assert cache.get(key_of("a", frame=2)) is None
        assert cache.get(key_of("b", frame=1)) is None
        assert cache.get(key_of("a", frame=1, scope=OTHER_SCOPE)) is None

    def test_get_or_compute_computes_a_miss_once_then_serves_it(self, cache: Any) -> None:
        compute = Counter(make_view(3))
        first = cache.get_or_compute(key_of("c"), compute)
        second = cache.get_or_compute(key_of("c"), compute)
        assert compute.calls == 1
        assert_same_view(first, make_view(3))
        assert_same_view(second, make_view(3))

    def test_an_error_reaches_the_caller_and_is_not_kept(self, cache: Any) -> None:
        with pytest.raises(CorruptFrameError, match="cannot be decoded"):
            cache.get_or_compute(key_of("e"), Counter(None))
        assert cache.get(key_of("e")) is None
        good = Counter(make_view(4))
        assert_same_view(cache.get_or_compute(key_of("e"), good), make_view(4))
        assert good.calls == 1

    def test_concurrent_requests_for_one_key_compute_once(self, cache: Any) -> None:
        compute = Counter(make_view(5), work_s=0.3)
        results = run_together([lambda: cache.get_or_compute(key_of("f"), compute)] * 8)
        assert compute.calls == 1
        for result in results:
            assert_same_view(result, make_view(5))

    def test_concurrent_failures_reach_every_waiter_and_are_not_kept(self, cache: Any) -> None:
        compute = Counter(None, work_s=0.15)
        results = run_together([lambda: cache.get_or_compute(key_of("g"), compute)] * 6)
        for result in results:
            assert isinstance(result, CorruptFrameError)
            assert "cannot be decoded" in str(result)
        assert compute.calls == (1 if self.failures_are_shared else 6)
        assert cache.get(key_of("g")) is None
