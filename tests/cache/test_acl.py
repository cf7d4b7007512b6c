"""ESAF isolation in Redis: each ESAF group's workers get a Redis user confined to its keys."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from cache_contract import Counter, key_of
from cache_samples import assert_same_view, make_view

from imageserver.cache.acl import CacheAccess, key_pattern, user_name
from imageserver.cache.codec import ViewCodec
from imageserver.cache.keys import Scope
from imageserver.cache.shared import RedisLink, SharedCache
from imageserver.config import CacheSettings
from imageserver.embedded_redis import EmbeddedRedis

ADMIN_PASSWORD = "admin-only-secret"
GID_A, GID_B = 61001, 61002
SCOPE_B = Scope(gid=GID_B, home="/data/esaf61002", home_tag="5001")


@dataclass(frozen=True)
class Worker:
    gid: int


@pytest.fixture
def locked_redis(own_redis: EmbeddedRedis) -> Iterator[str]:
    """A Redis whose default user needs a password, as production must be; its admin URL."""
    own_redis.client().config_set("requirepass", ADMIN_PASSWORD)
    yield f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{own_redis.port}/1"


def settings(url: str, **changes: object) -> CacheSettings:
    return CacheSettings(redis_url=url, key_prefix="istest", **changes)  # type: ignore[arg-type]


def worker_cache(extras: dict[str, object]) -> SharedCache:  # type: ignore[type-arg]
    access = extras["cache"]
    assert isinstance(access, dict)
    link = RedisLink.connect(
        access["url"],
        prefix="istest",
        timeout_s=0.25,
        retry_s=30.0,
        username=access["user"],
        password=access["password"],
    )
    return SharedCache(link, ViewCodec(), ttl_s=60, claim_s=1.0)


def raw_client(extras: dict[str, object]) -> redis.Redis:
    access = extras["cache"]
    assert isinstance(access, dict)
    return redis.Redis.from_url(
        access["url"], username=access["user"], password=access["password"], socket_timeout=1
    )


def test_a_worker_of_one_esaf_cannot_read_or_touch_another_esafs_entries(
    locked_redis: str,
) -> None:
    access = CacheAccess(settings(locked_redis))
    extras_a, extras_b = access.worker_extras(Worker(GID_A)), access.worker_extras(Worker(GID_B))
    assert ADMIN_PASSWORD not in str(extras_a) and extras_a != extras_b
    cache_a = worker_cache(extras_a)
    cache_a.get_or_compute(key_of("secret"), Counter(make_view(1)))
    name_a = key_of("secret").redis_name("istest")

    # What an honest worker of B sees: its own names only, so a miss.
    assert worker_cache(extras_b).get(key_of("secret", scope=SCOPE_B)) is None
    # What a compromised worker of B can try with its credentials: refused by Redis.
    intruder = raw_client(extras_b)
    for attempt in (
        lambda: intruder.get(name_a),
        lambda: intruder.set(name_a, b"forged"),
        lambda: intruder.delete(name_a),
        lambda: intruder.keys("*"),
        lambda: intruder.scan(),
        lambda: intruder.flushall(),
        lambda: intruder.execute_command("ACL", "LIST"),
        lambda: intruder.config_get("requirepass"),
        lambda: intruder.eval("return redis.call('get', KEYS[1])", 1, name_a),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(extras_b["cache"]["url"]).get(name_a)  # type: ignore[index]
    assert_same_view(cache_a.get(key_of("secret")), make_view(1))  # untouched


def test_the_users_allow_only_the_gids_names_and_a_few_commands(locked_redis: str) -> None:
    access = CacheAccess(settings(locked_redis))
    access.worker_extras(Worker(GID_A))
    admin = redis.Redis.from_url(locked_redis)
    user = admin.acl_getuser(user_name("istest", GID_A))
    assert user["keys"] == [f"~{key_pattern('istest', GID_A)}"]
    assert sorted(user["commands"]) == ["+del", "+exists", "+get", "+ping", "+select", "+set"]
    assert user["categories"] == ["-@all"]
    assert user["channels"] == []


def test_after_a_redis_restart_the_users_are_provisioned_again(
    own_redis: EmbeddedRedis,
) -> None:
    access = CacheAccess(settings(own_redis.url))
    extras = access.worker_extras(Worker(GID_A))
    cache = worker_cache(extras)
    assert cache.put(key_of("r"), make_view(2))
    own_redis.stop()
    own_redis.start()  # a Redis without persistence forgets its users
    with pytest.raises(redis.exceptions.AuthenticationError):
        raw_client(extras).ping()
    assert access.provision_all() == 1  # what the refresh thread does every few seconds
    assert raw_client(extras).ping()


def test_stopping_the_manager_withdraws_its_passwords(locked_redis: str) -> None:
    access = CacheAccess(settings(locked_redis))
    extras = access.worker_extras(Worker(GID_A))
    assert raw_client(extras).ping()
    access.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        raw_client(extras).ping()


def test_an_open_redis_is_reported_and_refused_when_isolation_is_required(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="imageserver.cache.acl"):
        relaxed = CacheAccess(settings(own_redis.url)).worker_extras(Worker(GID_A))
        strict = CacheAccess(settings(own_redis.url, require_isolation=True)).worker_extras(
            Worker(GID_A)
        )
    assert "cache" in relaxed
    assert strict == {}
    messages = [record.getMessage() for record in caplog.records]
    assert any("holds only against honest workers" in m for m in messages)
    assert any("workers get no shared cache" in m for m in messages)


def test_without_a_shared_redis_workers_get_no_shared_tier() -> None:
    assert CacheAccess(settings("")).worker_extras(Worker(GID_A)) == {}
