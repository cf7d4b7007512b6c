"""What a worker can do if a malicious file takes it over, and what happens when the manager
dies: real processes, real accounts, a Redis whose default user has a password.

A worker must hold no secret beyond its own ESAF's: its readable memory (read as root from
/proc/PID/mem) holds neither the administrative Redis password, nor another user's session
token, nor another ESAF's Redis password. And no worker outlives the manager or the zygote.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from chain import (
    IS_ROOT,
    Chain,
    children_of,
    ground,
    is_alive,
    place_file,
    proc_gid,
    proc_status,
    running_chain,
    wait_for,
)
from redis_process import RedisServer

from imageserver.sampledata.dataset import PILATUS_CBF

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="real users, groups and /proc/PID/mem")
ESAF_A, ESAF_B = 61301, 61302
CHUNK_BYTES = 64 << 20
HEX_DIGIT = np.zeros(256, dtype=bool)
HEX_DIGIT[list(b"0123456789abcdef")] = True


@dataclass
class Site:
    redis: RedisServer
    admin_password: str
    users: tuple[str, str]
    gids: tuple[int, int]
    cbfs: tuple[Path, Path]


@pytest.fixture(scope="module")
def site(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    admin_password = f"admin-{os.urandom(12).hex()}"
    with ground(tmp_path_factory.mktemp("redis"), password=admin_password) as base:
        accounts, data, redis = base.accounts, base.data, base.redis
        suffix = os.urandom(3).hex()
        users = (f"isia{suffix}", f"isib{suffix}")
        for user in users:
            accounts.add_user(user)
        gids = (accounts.add_esaf_group(ESAF_A), accounts.add_esaf_group(ESAF_B))
        cbfs = tuple(
            place_file(sample_dir / PILATUS_CBF, data / name / PILATUS_CBF, gid=gid)
            for name, gid in (("a", gids[0]), ("b", gids[1]))
        )
        for name in ("a", "b"):
            (data / name).chmod(0o755)
        yield Site(redis, admin_password, users, gids, (cbfs[0], cbfs[1]))


@pytest.fixture
def chain(site: Site) -> Iterator[Chain]:
    with running_chain(site.redis.url, deadline_s=20.0) as running:
        yield running


def serve_both(chain: Chain, site: Site) -> tuple[str, str]:
    """A session per user, each served by its own worker (and its ESAF's Redis user)."""
    tokens = []
    for user, esaf, cbf in zip(site.users, (ESAF_A, ESAF_B), site.cbfs, strict=True):
        token = chain.session(user, [esaf])
        request = {"type": "jpeg", "pid": token, "esaf": esaf, "fn": str(cbf), "xsize": 64}
        reply = chain.request(request)
        assert reply.error is None and reply.job.get("error") is None, reply.frames[:2]
        tokens.append(token)
    return tokens[0], tokens[1]


def worker_of(chain: Chain, gid: int) -> int:
    return int(
        wait_for(
            lambda: next((p for p in chain.worker_pids() if proc_gid(p) == gid), None),
            what=f"the worker of gid {gid}",
        )
    )


def memory_chunks(pid: int) -> Iterator[bytes]:
    """Every readable mapping of a process, in overlapping chunks (root reads /proc/PID/mem)."""
    overlap = 256
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split()
            if fields[1][0] != "r" or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(value, 16) for value in fields[0].split("-"))
            position = start
            while position < end:
                size = min(CHUNK_BYTES, end - position)
                try:
                    mem.seek(position)
                    chunk = mem.read(size)
                except OSError:
                    break
                yield chunk
                position += max(size - overlap, 1) if size == CHUNK_BYTES else size


def found_in_memory(pid: int, needles: list[bytes]) -> set[bytes]:
    return {needle for chunk in memory_chunks(pid) for needle in needles if needle in chunk}


def acl_password_hashes(site: Site, gid: int) -> set[bytes]:
    """The SHA-256 of each password of an ESAF group's Redis user (what ACL GETUSER shows)."""
    user = site.redis.client().acl_getuser(f"imageserver-g{gid}")
    return {str(value).encode() for value in user["passwords"]}


def hex_strings(pid: int) -> set[bytes]:
    """Every 64-character window of the runs of 64 to 256 lowercase hex digits in a process's
    readable memory (a Redis password here is 64 hex digits). NumPy, not a regex: 30× faster."""
    found: set[bytes] = set()
    for chunk in memory_chunks(pid):
        is_hex = np.concatenate(([False], HEX_DIGIT[np.frombuffer(chunk, np.uint8)], [False]))
        edges = np.flatnonzero(is_hex[1:] != is_hex[:-1])
        for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            if 64 <= end - start <= 256:
                found.update(chunk[at : at + 64] for at in range(start, end - 63))
    return found


def hashing_to(candidates: set[bytes], hashes: set[bytes]) -> set[bytes]:
    return {c for c in candidates if hashlib.sha256(c).hexdigest().encode() in hashes}


def test_a_worker_holds_no_admin_password_no_other_token_no_other_esafs_password(
    chain: Chain, site: Site
) -> None:
    token_a, token_b = serve_both(chain, site)
    worker_a = worker_of(chain, site.gids[0])
    worker_b = worker_of(chain, site.gids[1])
    secrets = [site.admin_password.encode(), token_b.encode()]
    # The scan works: the manager (root) holds both, worker B its own token.
    assert found_in_memory(chain.manager_pid(), secrets) == set(secrets)
    assert token_b.encode() in found_in_memory(worker_b, [token_b.encode()])
    assert found_in_memory(worker_a, secrets) == set()
    assert found_in_memory(chain.zygote_pid(), [*secrets, token_a.encode()]) == set()
    # Each worker holds its own ESAF's Redis password, and not the other's.
    own, other = acl_password_hashes(site, site.gids[0]), acl_password_hashes(site, site.gids[1])
    assert own and other
    candidates = hex_strings(worker_a)
    assert len(hashing_to(candidates, own)) == 1
    assert hashing_to(candidates, other) == set()


def test_another_process_of_the_same_user_cannot_read_a_workers_memory(
    chain: Chain, site: Site
) -> None:
    """Workers are not dumpable: a user's own shell cannot read its worker's Redis password."""
    serve_both(chain, site)
    worker = worker_of(chain, site.gids[0])
    uid = int(proc_status(worker)["Uid"].split()[1])
    child = os.fork()
    if child == 0:  # the same user and group as the worker, as a login shell would be
        code = 3
        try:
            os.setgroups([site.gids[0]])
            os.setresgid(site.gids[0], site.gids[0], site.gids[0])
            os.setresuid(uid, uid, uid)
            with open(f"/proc/{worker}/mem", "rb") as mem:
                mem.read(1)
            code = 1
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_no_worker_outlives_a_killed_manager(chain: Chain, site: Site) -> None:
    serve_both(chain, site)
    zygote = chain.zygote_pid()
    workers = [worker_of(chain, gid) for gid in site.gids]
    os.kill(chain.manager_pid(), signal.SIGKILL)
    time.sleep(1.0)
    assert [pid for pid in [zygote, *workers] if is_alive(pid)] == []


def test_no_worker_outlives_a_killed_zygote_and_the_manager_serves_on(
    chain: Chain, site: Site
) -> None:
    serve_both(chain, site)
    zygote = chain.zygote_pid()
    workers = [worker_of(chain, gid) for gid in site.gids]
    os.kill(zygote, signal.SIGKILL)
    time.sleep(1.0)
    assert [pid for pid in workers if is_alive(pid)] == []
    wait_for(
        lambda: (
            chain.log_text().count("worker zygote") >= 2
            and len(children_of(chain.manager_pid())) == 1
        ),
        timeout_s=60,
        what="a new zygote",
    )
    assert chain.zygote_pid() != zygote
    serve_both(chain, site)
    assert chain.processes["serve"].poll() is None
