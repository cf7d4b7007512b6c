"""SharedCache on a real redis-server: the contract, TTL, claims across processes, failures."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_contract import CacheTests, Counter, key_of
from cache_samples import assert_same_view, make_view

from imageserver.cache.codec import ViewCodec
from imageserver.cache.shared import RedisLink, SharedCache, WriteBehind, public_url
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.render import ReducedView

PREFIX = "istest"


def shared(
    url: str, *, claim_s: float = 2.0, retry_s: float = 2.0, timeout_s: float = 0.25, **kw: object
) -> SharedCache[ReducedView]:
    link = RedisLink.connect(url, prefix=PREFIX, timeout_s=timeout_s, retry_s=retry_s)
    return SharedCache(link, ViewCodec(), ttl_s=60, claim_s=claim_s, **kw)  # type: ignore[arg-type]


class TestSharedCache(CacheTests):
    failures_are_shared = False  # a waiter in another process cannot receive the exception

    @pytest.fixture
    def cache(self, redis_url: str) -> Iterator[SharedCache[ReducedView]]:
        cache = shared(redis_url)
        yield cache
        cache.link.close()


def test_entries_carry_the_ttl_and_live_under_the_esaf_prefix(
    redis_url: str, module_redis: EmbeddedRedis
) -> None:
    cache = shared(redis_url)
    cache.put(key_of("t"), make_view(1))
    names = [name.decode() for name in module_redis.client().keys("*")]
    assert names == [key_of("t").redis_name(PREFIX)]
    assert names[0].startswith(f"{PREFIX}:61001:frame:")
    assert 59_000 < module_redis.client().pttl(names[0]) <= 60_000


def test_write_behind_stores_after_returning_and_drops_the_claim(
    redis_url: str, module_redis: EmbeddedRedis
) -> None:
    writer = WriteBehind()
    cache = shared(redis_url, writer=writer)
    view = cache.get_or_compute(key_of("wb"), Counter(make_view(2)))
    writer.flush()
    assert_same_view(shared(redis_url).get(key_of("wb")), view)
    assert module_redis.client().exists(key_of("wb").redis_name(PREFIX) + ":claim") == 0


def test_a_corrupt_entry_is_a_miss_and_is_replaced(
    redis_url: str, module_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    name = key_of("bad").redis_name(PREFIX)
    module_redis.client().set(name, b"ISC1\x04\x00\x00\x00viewgarbage")
    cache = shared(redis_url)
    with caplog.at_level(logging.WARNING):
        assert cache.get(key_of("bad")) is None
    assert cache.stats.invalid == 1
    assert f"ignoring shared cache entry {name}" in caplog.text
    compute = Counter(make_view(3))
    cache.get_or_compute(key_of("bad"), compute)
    assert compute.calls == 1
    assert_same_view(cache.get(key_of("bad")), make_view(3))


WORKER_SCRIPT = """
import sys, time
import redis
sys.path.insert(0, sys.argv[4])
from cache_contract import key_of
from cache_samples import make_view
from imageserver.cache.codec import ViewCodec
from imageserver.cache.shared import RedisLink, SharedCache

url, counter, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
link = RedisLink.connect(url, prefix="istest", timeout_s=0.25, retry_s=2.0)
cache = SharedCache(link, ViewCodec(), ttl_s=60, claim_s=5.0)
counting = redis.Redis.from_url(url)

def compute():
    counting.incr(counter)
    time.sleep(0.4)
    return make_view(4)

time.sleep(max(0.0, start_at - time.time()))
print(int(cache.get_or_compute(key_of("many"), compute).reduced.values.sum()))
"""


def test_processes_asking_for_one_new_entry_compute_it_once(
    redis_url: str, module_redis: EmbeddedRedis
) -> None:
    """Four processes at once: one computes (0.4 s), the others wait and read its result.

    Fresh interpreters, not forks: bitshuffle's OpenMP pool, started by earlier tests in this
    process, would hang a forked child (workers are forked from a zygote that never used it).
    """
    counter = f"{PREFIX}:computations"
    start_at = time.time() + 2.0
    here = str(Path(__file__).parent)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, redis_url, counter, str(start_at), here],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, outputs
    assert [int(out) for out, _ in outputs] == [int(make_view(4).reduced.values.sum())] * 4
    assert int(module_redis.client().get(counter)) == 1


def test_a_crashed_holder_delays_others_only_until_its_claim_expires(
    redis_url: str, module_redis: EmbeddedRedis
) -> None:
    claim = key_of("crash").redis_name(PREFIX) + ":claim"
    module_redis.client().set(claim, "a process that died", px=400)
    compute = Counter(make_view(5))
    started = time.monotonic()
    view = shared(redis_url, claim_s=5.0).get_or_compute(key_of("crash"), compute)
    elapsed = time.monotonic() - started
    assert 0.3 < elapsed < 1.5
    assert compute.calls == 1
    assert_same_view(view, make_view(5))


def test_a_holder_that_takes_too_long_is_not_waited_for_past_claim_s(
    redis_url: str, module_redis: EmbeddedRedis
) -> None:
    claim = key_of("slow").redis_name(PREFIX) + ":claim"
    module_redis.client().set(claim, "a very slow process", px=60_000)
    compute = Counter(make_view(6))
    started = time.monotonic()
    shared(redis_url, claim_s=0.3).get_or_compute(key_of("slow"), compute)
    assert 0.25 < time.monotonic() - started < 1.0
    assert compute.calls == 1


def test_requests_are_answered_while_redis_is_down_and_it_is_used_again_after(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = shared(own_redis.url, retry_s=0.3)
    assert cache.put(key_of("before"), make_view(1))
    own_redis.stop()
    compute = Counter(make_view(2))
    with caplog.at_level(logging.INFO, logger="imageserver.cache.shared"):
        started = time.monotonic()
        for frame in range(1, 11):
            assert_same_view(cache.get_or_compute(key_of("down", frame), compute), make_view(2))
        assert time.monotonic() - started < 2.0
        assert compute.calls == 10
        downs = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(downs) == 1 and downs[0].levelno == logging.WARNING
        own_redis.start()  # same port, empty: a restarted Redis
        deadline = time.monotonic() + 5.0
        while not cache.put(key_of("after"), make_view(3)):
            assert time.monotonic() < deadline, "the shared tier was not used again"
            time.sleep(0.05)
        assert "available again" in caplog.text
    assert_same_view(cache.get(key_of("after")), make_view(3))
    assert cache.link.is_up


def test_a_redis_that_does_not_answer_costs_one_timeout_then_nothing() -> None:
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        cache = shared(url, timeout_s=0.2, retry_s=30.0)
        started = time.monotonic()
        assert_same_view(cache.get_or_compute(key_of("hung"), Counter(make_view(1))), make_view(1))
        first_s = time.monotonic() - started
        started = time.monotonic()
        for frame in range(2, 7):
            cache.get_or_compute(key_of("hung", frame), Counter(make_view(1)))
        assert 0.15 < first_s < 1.0
        assert time.monotonic() - started < 0.1
        assert not cache.link.is_up


def test_a_worker_is_told_the_address_without_the_administrative_password() -> None:
    assert public_url("redis://admin:s3cret@cache.example:6380/1") == "redis://cache.example:6380/1"
    assert public_url("rediss://:pw@[::1]:6379/0") == "rediss://[::1]:6379/0"
    assert public_url("unix:///run/redis.sock?db=1&password=pw") == "unix:///run/redis.sock?db=1"


def test_without_a_claim_a_miss_is_computed_at_once_and_stored(
    redis_url: str, module_redis: EmbeddedRedis
) -> None:
    claim = key_of("cheap").redis_name(PREFIX) + ":claim"
    module_redis.client().set(claim, "another process", px=60_000)
    compute = Counter(make_view(7))
    started = time.monotonic()
    shared(redis_url, claim_s=5.0).get_or_compute(key_of("cheap"), compute, claim=False)
    assert time.monotonic() - started < 0.5  # the other process's claim is not waited for
    assert compute.calls == 1
    assert_same_view(shared(redis_url).get(key_of("cheap")), make_view(7))
