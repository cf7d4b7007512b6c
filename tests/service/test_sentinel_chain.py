"""The whole chain on a Sentinel-managed Redis: the primary dies (kill -9), every request
meanwhile gets one error reply at once, and the same processes serve again after the
failover, sessions and the ESAF's shared cache included."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain import (
    IS_ROOT,
    Accounts,
    Chain,
    is_alive,
    login_name,
    place_file,
    running_chain,
    wait_for,
    world_readable_dir,
)
from sentinel_process import SERVICE, SentinelGroup

from imageserver.sampledata.dataset import PILATUS_CBF

PASSWORD = "admin-only-secret"
ESAF = 61001


@dataclass
class World:
    chain: Chain
    group: SentinelGroup
    user: str
    esaf: int
    gid: int
    cbf: Path


@pytest.fixture
def world(sample_dir: Path, tmp_path: Path) -> Iterator[World]:
    accounts = Accounts()
    data = world_readable_dir()
    group = SentinelGroup(tmp_path / "redis", password=PASSWORD).start()
    try:
        if IS_ROOT:
            user = f"iss{os.urandom(3).hex()}"
            accounts.add_user(user)
            gid, esaf = accounts.add_esaf_group(ESAF), ESAF
        else:
            user, gid, esaf = login_name(), os.getgid(), 0
        cbf = place_file(sample_dir / PILATUS_CBF, data / PILATUS_CBF, gid=gid, mode=0o644)
        redis_config = f'sentinels = "{group.sentinels}"\nsentinel_service = "{SERVICE}"\n'
        with running_chain(group.url(0), redis_config=redis_config) as chain:
            yield World(chain, group, user, esaf, gid, cbf)
    finally:
        group.stop()
        accounts.remove_all()
        shutil.rmtree(data, ignore_errors=True)


def jpeg(world: World, pid: str, xsize: int) -> dict[str, object]:
    return {"type": "jpeg", "pid": pid, "esaf": world.esaf, "fn": str(world.cbf), "xsize": xsize}


def cached_names(world: World, port: int) -> list[bytes]:
    """The ESAF's shared-cache entries on one data node."""
    with world.group.node(port) as node:
        node.select(1)  # type: ignore[no-untyped-call]
        return list(node.keys(f"imageserver:{world.gid}:*"))


def test_a_failover_costs_error_replies_while_it_lasts_never_a_restart(world: World) -> None:
    chain = world.chain
    manager = chain.manager_pid()
    pid = chain.session(world.user, [world.esaf])
    assert chain.request(jpeg(world, pid, 300)).error is None
    old = world.group.primary_port()
    wait_for(lambda: cached_names(world, old), what="a shared-cache entry on the primary")
    replica = world.group.replica_port()
    wait_for(lambda: cached_names(world, replica), what="the entry replicated")

    world.group.kill_primary()
    errors: list[str] = []
    slowest_s = 0.0
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        started = time.monotonic()
        reply = chain.request(jpeg(world, pid, 300), timeout_s=10.0)
        slowest_s = max(slowest_s, time.monotonic() - started)
        if reply.error is None:
            break
        errors.append(reply.error)
        time.sleep(0.05)
    else:
        pytest.fail(f"no request succeeded within 20 s of the primary's death: {errors[-3:]}")
    assert errors, "the requests right after the primary's death should have been refused"
    assert all("session store unavailable" in error for error in errors), set(errors)
    assert slowest_s < 3.0, slowest_s
    new = world.group.wait_for_failover(old)

    # Same processes; old sessions (replicated) and new ones work; the cache is shared again.
    assert chain.manager_pid() == manager and is_alive(manager)
    fresh = chain.session(world.user, [world.esaf])
    before = set(cached_names(world, new))
    xsize = 200

    def new_entry() -> bool:
        nonlocal xsize
        xsize += 8
        assert chain.request(jpeg(world, fresh, xsize)).error is None
        return bool(set(cached_names(world, new)) - before)

    wait_for(new_entry, timeout_s=10.0, what="a new shared-cache entry on the new primary")
    assert chain.request(jpeg(world, pid, 256)).error is None
    assert "session store unavailable" in chain.log_text()
