"""Redis clients from settings, against a real Sentinel group: a failover costs errors while
no primary is known, never a new client; ESAF users exist on every data node."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis_process import RedisServer
from sentinel_process import SERVICE, SentinelGroup

from imageserver.cache.acl import CacheAccess, user_name
from imageserver.cache.renderer import worker_link
from imageserver.cache.shared import RedisLink
from imageserver.config import CacheSettings
from imageserver.errors import CacheUnavailableError
from imageserver.redis_connect import RedisTarget, connect_redis, replica_addresses

PASSWORD = "admin-only-secret"
GID = 61001


@dataclass(frozen=True)
class Worker:
    gid: int


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path, password=PASSWORD).start()
    try:
        yield group
    finally:
        group.stop()


def target(group: SentinelGroup, db: int = 0) -> RedisTarget:
    return RedisTarget(
        group.url(db), tuple(("127.0.0.1", port) for port in group.sentinel_ports), SERVICE
    )


def test_a_client_reaches_the_primary_the_sentinels_name(group: SentinelGroup) -> None:
    client = connect_redis(target(group, db=2), timeout_s=0.5)
    client.set("k", b"v")
    with group.node(group.primary_port()) as primary:
        primary.select(2)  # type: ignore[no-untyped-call]
        assert primary.get("k") == b"v"
    assert replica_addresses(client) == [("127.0.0.1", group.replica_port())]


def test_during_a_failover_commands_fail_fast_then_the_same_client_works_again(
    group: SentinelGroup,
) -> None:
    client = connect_redis(target(group), timeout_s=0.5)
    client.set("before", b"1")
    wait_until_replicated(group, "before", db=0)
    old = group.kill_primary()
    slowest_s = 0.0
    failures = 0
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            client.set("during", b"2")
        except redis.ConnectionError:
            failures += 1
            slowest_s = max(slowest_s, time.monotonic() - started)
            time.sleep(0.05)
            continue
        break
    else:
        pytest.fail("no write succeeded within 20 s of the primary's death")
    assert failures > 0 and slowest_s < 2.0, (failures, slowest_s)
    new = group.wait_for_failover(old)
    assert new != old
    assert client.get("before") == b"1"  # replicated before the crash
    assert client.get("during") == b"2"


def wait_until_replicated(group: SentinelGroup, key: str, db: int) -> None:
    """Replication is asynchronous: a write the primary took may die with it."""
    replica = redis.Redis(port=group.replica_port(), db=db, password=group.password)
    deadline = time.monotonic() + 5.0
    with replica:
        while replica.get(key) is None:
            assert time.monotonic() < deadline, "the replica never got the write"
            time.sleep(0.02)


def test_esaf_users_are_on_every_node_so_workers_survive_a_failover(
    group: SentinelGroup,
) -> None:
    settings = CacheSettings(
        redis_url=group.url(1),
        sentinels=group.sentinels,
        sentinel_service=SERVICE,
        key_prefix="istest",
        redis_retry_s=0.2,
    )
    access = CacheAccess(settings)
    try:
        extras = access.worker_extras(Worker(GID))
        grant = extras["cache"]
        assert PASSWORD not in str(extras)
        assert grant["sentinels"] == [["127.0.0.1", port] for port in group.sentinel_ports]
        for port in group.node_ports:
            with group.node(port) as node:
                assert node.acl_getuser(user_name("istest", GID)) is not None, port
        link = worker_link(grant, settings)
        assert link is not None
        name = f"istest:{GID}:x"
        link.run(lambda r: r.set(name, b"1"))
        wait_until_replicated(group, name, db=1)
        old = group.kill_primary()
        with pytest.raises(CacheUnavailableError):
            link.run(lambda r: r.get(name))
        group.wait_for_failover(old)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                assert link.run(lambda r: r.get(name)) == b"1"
                link.run(lambda r: r.set(name, b"2"))
                break
            except CacheUnavailableError:
                assert time.monotonic() < deadline, "the worker's link did not come back"
                time.sleep(0.1)
        link.close()
    finally:
        access.close()


def test_a_planned_failover_demotes_the_primary_and_writes_move_on(group: SentinelGroup) -> None:
    client = connect_redis(target(group), timeout_s=0.5)
    client.set("k", b"1")
    old = group.primary_port()
    with group.sentinel(group.sentinel_ports[0]) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
    group.wait_for_failover(old)
    errors = 0
    for _ in range(3):  # the connection to the demoted primary fails once (READONLY or closed)
        try:
            client.set("k", b"2")
            break
        except redis.ConnectionError:
            errors += 1
    assert errors <= 1
    assert client.get("k") == b"2"


def test_a_write_refused_by_a_read_only_replica_is_a_passing_outage(
    redis_server: RedisServer,
) -> None:
    link = RedisLink.connect(redis_server.url, prefix="istest", timeout_s=0.5, retry_s=0.1)
    link.run(lambda r: r.set("k", b"1"))
    with redis_server.client() as admin:
        admin.replicaof("127.0.0.1", "1")  # a demoted primary: READONLY for writes
        with pytest.raises(CacheUnavailableError, match=r"READONLY|read only"):
            link.run(lambda r: r.set("k", b"2"))
        admin.replicaof("NO", "ONE")
    time.sleep(0.15)  # past retry_s
    link.run(lambda r: r.set("k", b"3"))
    assert link.run(lambda r: r.get("k")) == b"3"
    link.close()
