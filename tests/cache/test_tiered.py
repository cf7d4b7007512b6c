"""TieredCache: the contract over memory + Redis, write-through, and where a value came from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cache_contract import CacheTests, Counter, key_of
from cache_samples import assert_same_view, make_view

from imageserver.cache.codec import ViewCodec
from imageserver.cache.memory import MemoryCache
from imageserver.cache.shared import RedisLink, SharedCache
from imageserver.cache.tiered import TieredCache
from imageserver.render import ReducedView


def tiered(redis_url: str) -> TieredCache[ReducedView]:
    link = RedisLink.connect(redis_url, prefix="istest", timeout_s=0.25, retry_s=2.0)
    memory: MemoryCache[Any] = MemoryCache(1 << 22, lambda view: view.nbytes)
    return TieredCache(memory, SharedCache(link, ViewCodec(), ttl_s=60, claim_s=2.0))


class TestTieredCache(CacheTests):
    @pytest.fixture
    def cache(self, redis_url: str) -> Iterator[TieredCache[ReducedView]]:
        cache = tiered(redis_url)
        yield cache
        assert cache.shared is not None
        cache.shared.link.close()


def test_a_computed_value_is_in_both_tiers(redis_url: str) -> None:
    cache = tiered(redis_url)
    assert cache.shared is not None
    view, where = cache.fetch(key_of("both"), Counter(make_view(1)))
    assert where == "computed"
    assert cache.memory.get(key_of("both")) is view
    assert_same_view(cache.shared.get(key_of("both")), make_view(1))


def test_another_process_finds_it_in_redis_and_keeps_it_in_memory(redis_url: str) -> None:
    tiered(redis_url).get_or_compute(key_of("x"), Counter(make_view(2)))
    other = tiered(redis_url)  # another worker: empty memory, same Redis
    compute = Counter(make_view(9))
    view, where = other.fetch(key_of("x"), compute)
    assert (where, compute.calls) == ("shared", 0)
    assert_same_view(view, make_view(2))
    assert other.fetch(key_of("x"), compute) == (view, "memory")


def test_without_a_shared_tier_it_is_a_memory_cache() -> None:
    memory: MemoryCache[Any] = MemoryCache(1 << 20, lambda view: view.nbytes)
    cache: TieredCache[ReducedView] = TieredCache(memory, None)
    assert cache.fetch(key_of("m"), Counter(make_view(3)))[1] == "computed"
    assert cache.fetch(key_of("m"), Counter(make_view(3)))[1] == "memory"
    assert cache.put(key_of("n"), make_view(4)) and cache.get(key_of("n")) is not None
