"""The service end to end: proxy → manager → per-identity workers, with real parts only.

One chain (redis-server, proxy and manager processes) serves the whole module; as root, as
in CI, two real users and two real ESAF groups own the data, as on a beamline.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import simplejpeg
import zmq
from chain import (
    IS_ROOT,
    Chain,
    ground,
    login_name,
    place_file,
    proc_status,
    running_chain,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_process import RedisServer

from imageserver.client import Reply
from imageserver.render import Look, ViewSpec, render_file
from imageserver.sampledata.dataset import EIGER16M_STEM, PILATUS_CBF
from imageserver.sampledata.marccd import write_marccd

ESAF_A = 61001
ESAF_B = 61002
needs_root = pytest.mark.skipif(not IS_ROOT, reason="real users and groups need root")


@dataclass
class World:
    chain: Chain
    redis: RedisServer
    user_a: str
    user_b: str
    esaf_a: int
    esaf_b: int
    gid_a: int
    gid_b: int
    master_a: Path
    cbf_a: Path
    cbf_b: Path


@pytest.fixture(scope="module")
def world(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        accounts, data, redis = base.accounts, base.data, base.redis
        if IS_ROOT:
            suffix = os.urandom(3).hex()
            user_a, user_b = f"ista{suffix}", f"istb{suffix}"
            accounts.add_user(user_a)
            accounts.add_user(user_b)
            gid_a = accounts.add_esaf_group(ESAF_A)
            gid_b = accounts.add_esaf_group(ESAF_B)
            esaf_a, esaf_b = ESAF_A, ESAF_B
        else:
            user_a = user_b = login_name()
            gid_a = gid_b = os.getgid()
            esaf_a = esaf_b = 0
        for directory, gid in ((data / "a", gid_a), (data / "b", gid_b)):
            directory.mkdir()
            os.chown(directory, 0 if IS_ROOT else os.getuid(), gid)
            directory.chmod(0o750)
        for path in sample_dir.glob(f"{EIGER16M_STEM}_*.h5"):
            place_file(path, data / "a" / path.name, gid=gid_a)
        cbf_a = place_file(sample_dir / PILATUS_CBF, data / "a" / PILATUS_CBF, gid=gid_a)
        cbf_b = place_file(sample_dir / PILATUS_CBF, data / "b" / PILATUS_CBF, gid=gid_b)
        with running_chain(redis.url) as chain:
            yield World(
                chain=chain,
                redis=redis,
                user_a=user_a,
                user_b=user_b,
                esaf_a=esaf_a,
                esaf_b=esaf_b,
                gid_a=gid_a,
                gid_b=gid_b,
                master_a=data / "a" / f"{EIGER16M_STEM}_master.h5",
                cbf_a=cbf_a,
                cbf_b=cbf_b,
            )


def jpeg_request(world: World, pid: str, **fields: object) -> dict[str, object]:
    request = {"type": "jpeg", "pid": pid, "esaf": world.esaf_a, "fn": str(world.master_a)}
    request.update(fields)
    return request


# -- the legacy wire contract ----------------------------------------------------------------


def test_a_raw_req_client_gets_the_legacy_jpeg_frames(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    request = jpeg_request(world, pid, xsize=400, frame=2, contrast=0, wval=-1, tag="t-17")
    sock = world.chain.context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(world.chain.front)
    try:
        sock.send(json.dumps(request).encode())
        assert sock.poll(20000), "no reply"
        frames = sock.recv_multipart()
    finally:
        sock.close(0)
    assert len(frames) == 4
    assert frames[0] == b""
    job = json.loads(frames[1])
    assert frames[1] == json.dumps(job, separators=(",", ":"), sort_keys=True).encode()
    assert job["tag"] == "t-17"
    assert job["xsize"] == 400
    assert isinstance(job["bval_used"], int) and isinstance(job["wval_used"], int)
    assert job["bval_used"] > job["wval_used"] >= 0
    meta = json.loads(frames[2])
    assert meta["frame"] == 2
    assert (meta["first_frame"], meta["last_frame"]) == (1, 2)
    assert meta["x_pixels_in_detector"] == 2068
    for key in ("n", "mean", "rms", "stddev", "min", "max", "nSaturated", "spots"):
        assert key in meta
    image = simplejpeg.decode_jpeg(frames[3])
    assert image.shape == (round(400 * 1062 / 2068), 400, 3)


def test_spots_and_meta_replies(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    spots = world.chain.request(
        {"type": "SPOTS", "pid": pid, "esaf": world.esaf_a, "fn": str(world.master_a)}
    )
    assert spots.error is None
    assert len(spots.frames) == 3
    assert (spots.job["xsize"], spots.job["zoom"], spots.job["segcol"]) == (384, 1.0, 0.0)
    assert spots.meta["spots"] > 0
    meta = world.chain.request(
        {"type": "meta", "pid": pid, "esaf": world.esaf_a, "fn": str(world.cbf_a)}
    )
    assert len(meta.frames) == 3
    assert meta.meta["x_pixels_in_detector"] == 2463
    assert "n" not in meta.meta  # no pixels were read


def test_a_jpeg_that_cannot_be_made_is_a_grey_image_with_the_reason(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    reply = world.chain.request(jpeg_request(world, pid, fn="/no/such/file.cbf", xsize=64))
    assert len(reply.frames) == 4
    assert reply.frames[2] == b""
    assert "not found" in reply.job["error"]
    image = simplejpeg.decode_jpeg(reply.frames[3])
    assert image.shape == (64, 64, 3)
    assert abs(int(image.mean()) - 240) <= 2


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        (b"not json", "Failed to parse request"),
        (b'{"type":"jpeg"}', "request does not contain pid"),
        (b'{"type":"bogus","pid":"x"}', "Unknown job type 'bogus'"),
        (b'{"type":"rsync_transfer","pid":"x"}', "Obsolete job type"),
        (b'{"type":"jpeg","pid":"x","xsize":"512"}', "xsize"),
    ],
)
def test_bad_requests_get_one_error_frame(world: World, request_text: bytes, expected: str) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    request_text = request_text.replace(b'"pid":"x"', f'"pid":"{pid}"'.encode())
    sock = world.chain.context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(world.chain.front)
    try:
        sock.send(request_text)
        assert sock.poll(10000)
        frames = sock.recv_multipart()
    finally:
        sock.close(0)
    assert len(frames) == 1
    assert expected in frames[0].decode()


# -- sessions ----------------------------------------------------------------------------------


def test_every_refusal_is_a_clear_error_and_never_leaks_the_token(world: World) -> None:
    chain = world.chain
    good = chain.session(world.user_a, [world.esaf_a])
    store = world.redis.client()
    store.set("plainstring", "x")
    expired = chain.session(world.user_a, [world.esaf_a], exp=int(time.time()) - 5)
    other = chain.session(world.user_a, [world.esaf_a])
    store.hset(other, "isAuth", store.hget(good, "isAuth"))
    store.hset(other, "isAuthSig", store.hget(good, "isAuthSig"))
    forged = chain.session(world.user_a, [world.esaf_a])
    isauth = json.loads(store.hget(forged, "isAuth"))
    isauth["allowedESAFs"] = [1, 2, 3]
    store.hset(forged, "isAuth", json.dumps(isauth))
    cases = {
        "nosuchsession": "not active",
        "plainstring": "",
        expired: "expired",
        other: "another session",
        forged: "signature",
    }
    for pid, expected in cases.items():
        reply = chain.request(jpeg_request(world, pid))
        assert reply.error is not None, pid
        assert expected in reply.error
        assert pid not in reply.error
    if IS_ROOT:
        reply = chain.request(jpeg_request(world, good, esaf=world.esaf_b))
        assert reply.error is not None
        assert f"not authorized for esaf {world.esaf_b}" in reply.error
    assert chain.request(jpeg_request(world, good, xsize=32)).error is None


def test_logout_takes_effect_on_the_next_request(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    assert world.chain.request(jpeg_request(world, pid, xsize=32)).error is None
    world.redis.client().delete(pid)
    reply = world.chain.request(jpeg_request(world, pid, xsize=32))
    assert reply.error is not None and "not active" in reply.error


# -- identity ----------------------------------------------------------------------------------


@needs_root
def test_workers_run_as_the_user_with_only_the_esaf_group(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    assert world.chain.request(jpeg_request(world, pid, xsize=32)).error is None
    worker = _worker_of(world, _uid(world.user_a), world.gid_a)
    status = proc_status(worker)
    assert status["Uid"].split() == [str(_uid(world.user_a))] * 4
    assert status["Gid"].split() == [str(world.gid_a)] * 4
    assert status["Groups"].split() == [str(world.gid_a)]
    assert Path(f"/proc/{worker}/cwd").resolve() == Path(pwd.getpwnam(world.user_a).pw_dir)


@needs_root
def test_a_user_cannot_read_another_esafs_file(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    denied = world.chain.request(jpeg_request(world, pid, fn=str(world.cbf_b), xsize=32))
    assert denied.frames[2] == b""
    assert "permission denied" in denied.job["error"].lower()
    spots = world.chain.request(
        {"type": "spots", "pid": pid, "esaf": world.esaf_a, "fn": str(world.cbf_b)}
    )
    assert spots.error is not None and "permission denied" in spots.error.lower()
    own = world.chain.request(jpeg_request(world, pid, fn=str(world.cbf_a), xsize=32))
    assert own.error is None and own.frames[2] != b""
    pid_b = world.chain.session(world.user_b, [world.esaf_b])
    theirs = world.chain.request(
        {"type": "jpeg", "pid": pid_b, "esaf": world.esaf_b, "fn": str(world.cbf_b), "xsize": 32}
    )
    assert theirs.frames[2] != b""


@needs_root
@pytest.mark.parametrize("revoke", ["chmod", "chgrp"])
def test_revoked_access_to_an_open_data_file_takes_effect_at_once(
    world: World, revoke: str
) -> None:
    """The worker has the Eiger data file open (and its frame cached); a chmod or a change of
    group must still refuse the next request, in the same worker."""
    chain = world.chain
    pid = chain.session(world.user_a, [world.esaf_a])
    data_file = world.master_a.with_name(f"{EIGER16M_STEM}_data_000001.h5")
    request = jpeg_request(world, pid, frame=1, xsize=48)
    assert chain.request(request).image is not None
    worker = _worker_of(world, _uid(world.user_a), world.gid_a)
    if revoke == "chmod":
        data_file.chmod(0)
    else:
        os.chown(data_file, 0, world.gid_b)
    try:
        denied = chain.request(request)
        assert "permission denied" in denied.job["error"].lower(), denied.job
        assert str(data_file) in denied.job["error"]
        assert _worker_of(world, _uid(world.user_a), world.gid_a) == worker
    finally:
        os.chown(data_file, 0, world.gid_a)
        data_file.chmod(0o640)
    assert chain.request(request).image is not None


# -- failures ----------------------------------------------------------------------------------


def _worker_of(world: World, uid: int, gid: int) -> int:
    def find() -> int | None:
        for pid in world.chain.worker_pids():
            status = proc_status(pid)
            if (int(status["Uid"].split()[0]), int(status["Gid"].split()[0])) == (uid, gid):
                return pid
        return None

    return int(wait_for(find, what=f"a worker with uid {uid} and gid {gid}"))


def _uid(login: str) -> int:
    return pwd.getpwnam(login).pw_uid


def test_a_worker_killed_mid_request_gives_an_error_and_is_replaced(world: World) -> None:
    chain = world.chain
    pid = chain.session(world.user_a, [world.esaf_a])
    assert chain.request(jpeg_request(world, pid, xsize=32)).error is None
    worker = _worker_of(world, _uid(world.user_a), world.gid_a)
    os.kill(worker, signal.SIGSTOP)  # it is now "mid-request" for whatever we send
    sock = chain.context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(chain.front)
    try:
        sock.send(json.dumps(jpeg_request(world, pid, xsize=48)).encode())
        time.sleep(0.3)
        os.kill(worker, signal.SIGKILL)
        assert sock.poll(10000), "no reply after the worker was killed"
        frames = sock.recv_multipart()
    finally:
        sock.close(0)
    assert len(frames) == 1 and b"SIGKILL" in frames[0]
    again = chain.request(jpeg_request(world, pid, xsize=32))
    assert again.error is None
    assert _worker_of(world, _uid(world.user_a), world.gid_a) != worker


def test_a_hung_worker_is_answered_at_the_deadline_and_others_are_served(world: World) -> None:
    chain = world.chain
    pid_a = chain.session(world.user_a, [world.esaf_a])
    assert chain.request(jpeg_request(world, pid_a, xsize=32)).error is None
    worker = _worker_of(world, _uid(world.user_a), world.gid_a)
    os.kill(worker, signal.SIGSTOP)
    hung = chain.context.socket(zmq.REQ)
    hung.setsockopt(zmq.LINGER, 0)
    hung.connect(chain.front)
    try:
        started = time.monotonic()
        hung.send(json.dumps(jpeg_request(world, pid_a, xsize=40)).encode())
        if IS_ROOT:  # another identity has its own worker and is not held up
            pid_b = chain.session(world.user_b, [world.esaf_b])
            other = chain.request(
                {
                    "type": "jpeg",
                    "pid": pid_b,
                    "esaf": world.esaf_b,
                    "fn": str(world.cbf_b),
                    "xsize": 32,
                },
                timeout_s=2.5,
            )
            assert other.error is None and other.frames[2] != b""
        assert hung.poll(15000), "no reply from a hung worker"
        frames = hung.recv_multipart()
        elapsed = time.monotonic() - started
    finally:
        hung.close(0)
    assert len(frames) == 1 and b"timed out" in frames[0]
    assert 2.5 < elapsed < 8.0
    wait_for(lambda: not os.path.exists(f"/proc/{worker}"), what="the hung worker to be killed")
    assert chain.request(jpeg_request(world, pid_a, xsize=32)).error is None


def test_redis_gone_is_an_error_and_recovery_is_automatic(world: World) -> None:
    chain = world.chain
    world.redis.stop()
    try:
        reply = chain.request(jpeg_request(world, "whatever"), timeout_s=10)
        assert reply.error is not None and "session store unavailable" in reply.error
    finally:
        world.redis.start()
    pid = chain.session(world.user_a, [world.esaf_a])
    assert chain.request(jpeg_request(world, pid, xsize=32)).error is None


def test_extra_frames_are_ignored_and_the_request_answered(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    sock = world.chain.context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(world.chain.front)
    try:
        sock.send_multipart([b"", json.dumps(jpeg_request(world, pid, xsize=32)).encode(), b"x"])
        assert sock.poll(10000)
        frames = sock.recv_multipart()
    finally:
        sock.close(0)
    assert frames[0] == b"" and len(frames) == 5


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(st.binary(max_size=40), min_size=1, max_size=6))
def test_a_thousand_malformed_messages_each_get_one_reply(
    world: World, frames: list[bytes]
) -> None:
    sock = world.chain.context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(world.chain.front)
    try:
        sock.send_multipart(frames)
        assert sock.poll(10000), f"no reply to {frames!r}"
        reply = sock.recv_multipart()
        assert not sock.poll(0), "more than one reply"
    finally:
        sock.close(0)
    assert reply[-1]  # the error text
    world.chain.check_alive()


# -- the cache ---------------------------------------------------------------------------------
# Whether a worker decoded a file is read from the kernel, not from timings: /proc/<pid>/io
# counts the bytes a process read() or pread() (rchar). A decode reads the file; an answer
# from the cache reads nothing but a few bytes of wake-up pipes.

DECODE_READS_BYTES = 200_000
CACHED_READS_BYTES = 16_384


def _bytes_read(pid: int) -> int:
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"])


def _worker_read(world: World, worker: int, request: dict[str, object]) -> tuple[int, Reply]:
    before = _bytes_read(worker)
    reply = world.chain.request(request)
    assert reply.error is None and "error" not in reply.job, reply.job
    return _bytes_read(worker) - before, reply


def _fresh_marccd(world: World, name: str, seed: int) -> Path:
    """A 512 × 512 MAR CCD frame no worker has seen, readable by ESAF A, in a directory of
    its own: in one a worker watches, live data would reduce it before it is asked."""
    staged = world.chain.directory / name
    write_marccd(staged, size_px=512, seed=seed)
    directory = world.master_a.parent / f"fresh-{Path(name).stem}"
    if not directory.exists():
        directory.mkdir()
        os.chown(directory, -1, world.gid_a)
        directory.chmod(0o750)
    return place_file(staged, directory / name, gid=world.gid_a)


def test_a_new_contrast_of_a_viewed_frame_reads_no_file(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    path = _fresh_marccd(world, "contrast.mccd", seed=11)
    started = world.chain.request(jpeg_request(world, pid, fn=str(world.cbf_a), xsize=16))
    assert started.error is None
    worker = _worker_of(world, _uid(world.user_a), world.gid_a)
    first_read, first = _worker_read(world, worker, jpeg_request(world, pid, fn=str(path)))
    second_read, second = _worker_read(
        world, worker, jpeg_request(world, pid, fn=str(path), contrast=77, wval=3)
    )
    repeat_read, repeat = _worker_read(
        world, worker, jpeg_request(world, pid, fn=str(path), contrast=77, wval=3, tag="again")
    )
    assert first_read > DECODE_READS_BYTES
    assert second_read < CACHED_READS_BYTES and repeat_read < CACHED_READS_BYTES
    assert (second.job["bval_used"], second.job["wval_used"]) == (77, 3)
    assert second.image != first.image and repeat.image == second.image
    assert repeat.job["tag"] == "again" and repeat.meta == second.meta == first.meta


def test_a_rewritten_file_is_served_with_its_new_pixels(world: World) -> None:
    pid = world.chain.session(world.user_a, [world.esaf_a])
    path = _fresh_marccd(world, "rewritten.mccd", seed=21)
    before = world.chain.request(jpeg_request(world, pid, fn=str(path), xsize=128))
    _fresh_marccd(world, "rewritten.mccd", seed=22)  # same name and size, new content
    after = world.chain.request(jpeg_request(world, pid, fn=str(path), xsize=128))
    expected = render_file(ViewSpec(path, xsize=128), Look())
    assert after.meta["mean"] != before.meta["mean"]
    assert after.meta["mean"] == pytest.approx(expected[1].stats.mean)
    assert after.image == expected[0].data


@needs_root
def test_another_user_of_the_esaf_gets_the_view_from_redis_without_reading_the_file(
    world: World,
) -> None:
    prefix = world.chain.settings.cache.key_prefix
    cache_db = redis.Redis(port=world.redis.port, db=1)
    pid_a = world.chain.session(world.user_a, [world.esaf_a])
    path, xsize = _view_stored_in_redis(world, cache_db, pid_a)
    pid_b = world.chain.session(world.user_b, [world.esaf_a])
    start = world.chain.request(jpeg_request(world, pid_b, fn=str(world.cbf_a), xsize=16))
    assert start.error is None
    worker_b = _worker_of(world, _uid(world.user_b), world.gid_a)
    assert worker_b != _worker_of(world, _uid(world.user_a), world.gid_a)
    request = jpeg_request(world, pid_b, fn=str(path), xsize=xsize)
    read_b, reply_b = _worker_read(world, worker_b, request)
    assert read_b < CACHED_READS_BYTES
    reply_a = world.chain.request(jpeg_request(world, pid_a, fn=str(path), xsize=xsize))
    assert reply_b.image == reply_a.image and reply_b.meta == reply_a.meta
    namespaces = {key.split(b":")[1] for key in cache_db.keys(f"{prefix}:*")}
    assert str(world.gid_a).encode() in namespaces
    user = cache_db.acl_getuser(f"{prefix}-g{world.gid_a}")
    assert user["keys"] == [f"~{prefix}:{world.gid_a}:*"]


def _view_stored_in_redis(world: World, cache_db: redis.Redis, pid: str) -> tuple[Path, int]:
    """Ask for views of new files until one file's view and size both reach Redis.

    A Redis restart earlier in this module made the workers' Redis users vanish until the
    manager provisions them again (within seconds), so the first files may stay local; a
    file's size is written to Redis only when it is first decoded, hence a new file each try.
    """
    prefix = f"{world.chain.settings.cache.key_prefix}:{world.gid_a}"
    deadline = time.monotonic() + 30.0
    for attempt in range(100):
        path = _fresh_marccd(world, f"shared{attempt}.mccd", seed=31 + attempt)
        views_before = set(cache_db.keys(f"{prefix}:view:*"))
        dims_before = set(cache_db.keys(f"{prefix}:dims:*"))
        assert world.chain.request(jpeg_request(world, pid, fn=str(path), xsize=256)).image
        stored_by = time.monotonic() + 3.0
        while time.monotonic() < stored_by:
            has_view = bool(set(cache_db.keys(f"{prefix}:view:*")) - views_before)
            has_dims = bool(set(cache_db.keys(f"{prefix}:dims:*")) - dims_before)
            if has_view and has_dims:
                return path, 256
            time.sleep(0.02)
        assert time.monotonic() < deadline, "no view reached Redis"
    raise AssertionError("no view reached Redis")
