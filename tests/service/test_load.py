"""Load control through the whole chain: requests that hang, stuck files, concurrent requests of
which only some are valid, an account that cannot start, a request beyond the memory ceiling.

Every request gets exactly one reply: the clients here are DEALER sockets, which would see a
second reply where a REQ socket would hide it. A stuck file is a real file system that stops
answering (a FUSE mirror, `hung_fs.py`), not a hook in the code under test.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fabio.cbfimage
import numpy as np
import pytest
import zmq
from chain import (
    IS_ROOT,
    Accounts,
    Chain,
    ground,
    is_alive,
    place_file,
    proc_gid,
    running_chain,
    wait_for,
)
from hung_fs import HungMount
from redis_process import RedisServer

from imageserver.sampledata.cbf import pilatus_geometry, pilatus_header_contents
from imageserver.sampledata.dataset import PILATUS_CBF

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="real users and ESAF groups need root")
ESAF = 61401
DEADLINE_S = 3.0


@dataclass
class Site:
    redis: RedisServer
    user: str
    gid: int
    data: Path
    cbf: Path
    accounts: Accounts


@pytest.fixture(scope="module")
def site(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        user = f"isld{os.urandom(3).hex()}"
        base.accounts.add_user(user)
        gid = base.accounts.add_esaf_group(ESAF)
        cbf = place_file(sample_dir / PILATUS_CBF, base.data / PILATUS_CBF, gid=gid)
        yield Site(base.redis, user, gid, base.data, cbf, base.accounts)


def running(site: Site, **chain_options: Any) -> contextlib.AbstractContextManager[Chain]:
    return running_chain(site.redis.url, **chain_options)


class Dealer:
    """A client that would notice a second reply (a REQ socket cannot)."""

    def __init__(self, chain: Chain) -> None:
        self.sock = chain.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(chain.front)

    def send(self, request: dict[str, Any]) -> None:
        self.sock.send_multipart([b"", json.dumps(request).encode()])

    def replies(self, timeout_s: float, then_s: float = 1.0) -> list[list[bytes]]:
        """Every reply that arrives: the first within ``timeout_s``, more within ``then_s``."""
        received = []
        if self.sock.poll(int(timeout_s * 1000)):
            received.append(self.sock.recv_multipart()[1:])
            while self.sock.poll(int(then_s * 1000)):
                received.append(self.sock.recv_multipart()[1:])
        return received

    def close(self) -> None:
        self.sock.close(0)


def view(site: Site, token: str, path: Path, **fields: Any) -> dict[str, Any]:
    return {"type": "jpeg", "pid": token, "esaf": ESAF, "fn": str(path), "xsize": 64, **fields}


def worker_pid(chain: Chain, gid: int) -> int:
    return int(
        wait_for(
            lambda: next((p for p in chain.worker_pids() if proc_gid(p) == gid), None),
            what="the worker",
        )
    )


def is_image(reply: list[bytes]) -> bool:
    return len(reply) == 4 and reply[0] == b"" and json.loads(reply[1]).get("error") is None


def test_several_requests_hung_together_are_each_answered_once(site: Site) -> None:
    with running(site, deadline_s=DEADLINE_S, threads=4) as chain:
        token = chain.session(site.user, [ESAF])
        assert chain.request(view(site, token, site.cbf)).error is None
        worker = worker_pid(chain, site.gid)
        os.kill(worker, signal.SIGSTOP)
        clients = [Dealer(chain) for _ in range(3)]
        try:
            for size, client in zip((40, 48, 56), clients, strict=True):
                client.send(view(site, token, site.cbf, xsize=size))
            answers = [client.replies(timeout_s=15) for client in clients]
        finally:
            for client in clients:
                client.close()
        assert [len(replies) for replies in answers] == [1, 1, 1]
        assert all(b"timed out" in replies[0][0] for replies in answers), answers
        assert chain.processes["serve"].poll() is None
        wait_for(lambda: not is_alive(worker), what="the hung worker to be killed")
        again = chain.request(view(site, token, site.cbf))
        assert again.error is None and again.image is not None
        assert worker_pid(chain, site.gid) != worker


def test_a_stuck_request_fails_alone_and_its_worker_is_drained(site: Site) -> None:
    """Two reads hang on a file server; the first times out, the second is answered later,
    and the identity's other requests go on meanwhile, first in the old worker, then in a
    fresh one."""
    source = site.data / "served"
    source.mkdir(mode=0o755, exist_ok=True)
    for name in ("stuck_0001.cbf", "slow_0001.cbf"):
        place_file(site.cbf, source / name, gid=site.gid)
    deadline_s = 4.0
    with (
        HungMount(source, Path(tempfile.mkdtemp(dir="/tmp"))) as mount,
        running(site, deadline_s=deadline_s, threads=3) as chain,
    ):
        token = chain.session(site.user, [ESAF])
        assert chain.request(view(site, token, site.cbf)).error is None
        worker = worker_pid(chain, site.gid)
        stuck, slow = mount.hold("stuck_0001.cbf"), mount.hold("slow_0001.cbf")
        stuck_client, slow_client = Dealer(chain), Dealer(chain)
        try:
            stuck_client.send(view(site, token, stuck))
            for size in (24, 32, 40):  # the worker's free threads serve the same identity
                reply = chain.request(view(site, token, site.cbf, xsize=size), timeout_s=3)
                assert reply.error is None and reply.image is not None
            time.sleep(2.0)
            slow_client.send(view(site, token, slow))  # in flight when stuck times out
            stuck_replies = stuck_client.replies(timeout_s=deadline_s, then_s=0.1)
            assert [b"timed out" in r[0] for r in stuck_replies] == [True], stuck_replies
            # The drained worker still owes the slow request; new ones go to a fresh one.
            fresh = chain.request(view(site, token, site.cbf, xsize=72), timeout_s=1.5)
            assert fresh.error is None
            assert worker_pid_other(chain, site.gid, worker) != worker
            assert is_alive(worker)
            mount.release("slow_0001.cbf")  # the file server answers, before the deadline
            slow_replies = slow_client.replies(timeout_s=deadline_s)
            assert len(slow_replies) == 1 and is_image(slow_replies[0]), slow_replies
            # Owing nothing more, the drained worker is killed, hung thread and all.
            wait_for(lambda: not is_alive(worker), what="the drained worker to be killed")
            assert stuck_client.replies(timeout_s=0.5) == []
        finally:
            stuck_client.close()
            slow_client.close()


def worker_pid_other(chain: Chain, gid: int, old: int) -> int:
    return int(
        wait_for(
            lambda: next((p for p in chain.worker_pids() if proc_gid(p) == gid and p != old), None),
            what="the fresh worker",
        )
    )


def test_an_account_without_home_gets_one_clear_error_and_no_fork_loop(site: Site) -> None:
    user = f"isnh{os.urandom(3).hex()}"
    site.accounts.add_user(user)
    home = Path(os.path.expanduser(f"~{user}"))
    shutil.rmtree(home)
    with running(
        site, deadline_s=DEADLINE_S, workers_extra="failed_start_retry_s = 2.0\n"
    ) as chain:
        token = chain.session(user, [ESAF])
        replies = [chain.request(view(site, token, site.cbf, xsize=s)) for s in range(32, 40)]
        expected = (
            f"cannot enter the home directory {home} of user {user} (esaf {ESAF}):"
            " No such file or directory"
        )
        assert {reply.error for reply in replies} == {expected}
        assert chain.log_text().count("starting a worker for uid") == 1
        assert "refused reason=no_home code=account_unusable" in chain.log_text()
        home.mkdir()
        shutil.chown(home, user)
        time.sleep(2.0)
        later = chain.request(view(site, token, site.cbf))
        assert later.job.get("error") is None and later.image is not None


def write_huge_cbf(path: Path, width_px: int, height_px: int) -> Path:
    """A gz-wrapped CBF of zeros: a few hundred kB on disk, ``width × height`` int32 decoded."""
    plain = path.with_suffix("")
    header = {
        "_array_data.header_convention": "PILATUS_1.2",
        "_array_data.header_contents": pilatus_header_contents(pilatus_geometry(), 0),
    }
    fabio.cbfimage.CbfImage(
        data=np.zeros((height_px, width_px), dtype=np.int32), header=header
    ).write(str(plain))
    with plain.open("rb") as source, gzip.open(path, "wb", compresslevel=1) as target:
        shutil.copyfileobj(source, target, 1 << 20)
    plain.unlink()
    return path


def test_a_request_beyond_the_memory_ceiling_fails_alone(site: Site) -> None:
    huge = write_huge_cbf(site.data / "huge_0001.cbf.gz", 8000, 8000)  # within the limits
    os.chown(huge, 0, site.gid)
    huge.chmod(0o640)
    with running(
        site,
        deadline_s=30.0,
        workers_extra=f"memory_limit_bytes = {512 << 20}\n",
    ) as chain:
        token = chain.session(site.user, [ESAF])
        assert chain.request(view(site, token, site.cbf)).error is None
        worker = worker_pid(chain, site.gid)
        reply = chain.request(view(site, token, huge))
        error = reply.error or reply.job.get("error") or ""  # the grey image, or one frame
        assert "memory" in error, error
        after = chain.request(view(site, token, site.cbf, xsize=80))
        assert after.error is None and after.image is not None
        assert worker_pid(chain, site.gid) == worker
        assert chain.processes["serve"].poll() is None


def test_concurrent_requests_of_which_some_are_invalid_each_get_their_own_answer(
    site: Site,
) -> None:
    """One new single-frame file, frame 1 (valid) and frame 2 (invalid) asked at once."""
    with running(site, deadline_s=20.0, threads=4) as chain:
        token = chain.session(site.user, [ESAF])
        for attempt in range(4):
            path = place_file(site.cbf, site.data / f"race{attempt}_0001.cbf", gid=site.gid)
            frames = [1, 2] * 4
            barrier = threading.Barrier(len(frames))
            replies: list[Any] = [None] * len(frames)

            def ask(
                index: int,
                frame: int,
                path: Path = path,
                barrier: Any = barrier,
                replies: list[Any] = replies,
            ) -> None:
                client = chain.client()
                try:
                    barrier.wait()
                    replies[index] = client.request(view(site, token, path, frame=frame))
                finally:
                    client.close()

            threads = [
                threading.Thread(target=ask, args=(index, frame))
                for index, frame in enumerate(frames)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            for frame, reply in zip(frames, replies, strict=True):
                error = reply.job.get("error")
                if frame == 1:
                    assert error is None and reply.meta["frame"] == 1, (attempt, error)
                else:
                    assert error == f"{path}: frame 2 is outside the file's frames 1–1", error
