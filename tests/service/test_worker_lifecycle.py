"""Worker processes come and go: at most max_workers, least recently used out first, and
idle ones retire; every request is still answered, by a fresh worker when needed."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain import (
    IS_ROOT,
    Chain,
    ground,
    login_name,
    place_file,
    proc_gid,
    wait_for,
    world_readable_dir,
)
from redis_process import RedisServer

from imageserver.sampledata.dataset import PILATUS_CBF

ESAFS = (61201, 61202, 61203)
needs_root = pytest.mark.skipif(not IS_ROOT, reason="three identities need real ESAF groups")


@dataclass
class Site:
    """A user allowed on ESAFS (as root; else the current user, ESAF 0) and a readable file."""

    redis: RedisServer
    user: str
    esafs: list[int]
    cbf: Path


@pytest.fixture(scope="module")
def site(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        accounts, data, redis = base.accounts, base.data, base.redis
        if IS_ROOT:
            user, esafs = f"islc{os.urandom(3).hex()}", list(ESAFS)
            accounts.add_user(user)
            for esaf in esafs:
                accounts.add_esaf_group(esaf)
        else:
            user, esafs = login_name(), [0]
        cbf = place_file(sample_dir / PILATUS_CBF, data / PILATUS_CBF, gid=os.getgid(), mode=0o644)
        yield Site(redis, user, esafs, cbf)


class Workers:
    """A running chain with its own worker limits, and what its workers are doing."""

    def __init__(self, site: Site, chain: Chain) -> None:
        self.site, self.chain = site, chain
        self.pid = chain.session(site.user, site.esafs)

    def ask(self, esaf: int) -> None:
        request = {"type": "meta", "pid": self.pid, "esaf": esaf, "fn": str(self.site.cbf)}
        reply = self.chain.request(request)
        assert reply.error is None, reply.error
        assert reply.meta["x_pixels_in_detector"] == 2463

    def of(self, esaf: int) -> int:
        """The worker running with the ESAF's group (the user's own group for ESAF 0)."""
        gid = os.getgid() if esaf == 0 else grp.getgrnam(f"istest{esaf}").gr_gid

        def find() -> int | None:
            for pid in self.chain.worker_pids():
                if proc_gid(pid) == gid:
                    return pid
            return None

        return int(wait_for(find, what=f"the worker of esaf {esaf}"))

    def running(self) -> list[int]:
        return self.chain.worker_pids()


@contextmanager
def workers(
    site: Site, *, idle_timeout_s: float = 600.0, max_workers: int = 64
) -> Iterator[Workers]:
    chain = Chain(
        world_readable_dir(), site.redis.url, idle_timeout_s=idle_timeout_s, max_workers=max_workers
    )
    chain.start()
    try:
        yield Workers(site, chain)
    finally:
        chain.stop()
        shutil.rmtree(chain.directory, ignore_errors=True)


def test_an_idle_worker_retires_and_the_next_request_gets_a_new_one(site: Site) -> None:
    esaf = site.esafs[0]
    with workers(site, idle_timeout_s=1.0) as chain:
        chain.ask(esaf)
        first = chain.of(esaf)
        wait_for(lambda: first not in chain.running(), timeout_s=10, what="its retirement")
        chain.ask(esaf)
        assert chain.of(esaf) != first


@needs_root
def test_a_new_identity_beyond_max_workers_replaces_the_least_recently_used(site: Site) -> None:
    one, two, three = site.esafs
    with workers(site, max_workers=2) as chain:
        chain.ask(one)
        chain.ask(two)
        chain.ask(one)  # two is now the least recently used
        kept, dropped = chain.of(one), chain.of(two)
        chain.ask(three)
        wait_for(lambda: dropped not in chain.running(), what="esaf two's worker to go")
        assert sorted(chain.running()) == sorted([kept, chain.of(three)])
        chain.ask(two)  # answered by a new worker, in place of one (now least recent)
        wait_for(lambda: kept not in chain.running(), what="esaf one's worker to go")
        assert chain.of(two) != dropped
        assert len(chain.running()) == 2


def test_a_worker_that_vanished_unreported_is_replaced_for_the_request(site: Site) -> None:
    """A worker killed before the zygote could report it (the zygote stopped here): the next
    request finds its socket gone and is given to a fresh worker, not answered with an error."""
    esaf = site.esafs[0]
    with workers(site) as chain:
        chain.ask(esaf)
        first = chain.of(esaf)
        zygote = chain.chain.zygote_pid()
        os.kill(zygote, signal.SIGSTOP)
        try:
            os.kill(first, signal.SIGKILL)
            time.sleep(0.3)  # the kernel closes its socket; the manager's ROUTER notices
            threading.Timer(0.5, os.kill, (zygote, signal.SIGCONT)).start()
            chain.ask(esaf)
        finally:
            os.kill(zygote, signal.SIGCONT)
        assert chain.of(esaf) != first
        assert "unreachable" in chain.chain.log_text()
