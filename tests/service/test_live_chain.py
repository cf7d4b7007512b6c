"""Live data through the whole chain: a frame the detector writes after the user asked
`latest` is answered from the worker's memory, and a view's neighbour is prepared.

Real redis-server, proxy and manager processes, a real worker (as root: a real user and ESAF
group), real files written as a detector writes them; the worker's DEBUG log says where each
answer came from.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain import IS_ROOT, Chain, ground, login_name, running_chain, wait_for

from imageserver.sampledata.cbf import write_pilatus_cbf
from imageserver.sampledata.eiger import LiveEigerWriter
from imageserver.sampledata.pattern import centred_geometry

ESAF = 61071


@dataclass
class LiveWorld:
    chain: Chain
    pid: str
    esaf: int
    gid: int
    data: Path
    cbf: bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWorld]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        if IS_ROOT:
            user = f"isl{os.urandom(3).hex()}"
            base.accounts.add_user(user)
            gid, esaf = base.accounts.add_esaf_group(ESAF), ESAF
        else:
            user, gid, esaf = login_name(), os.getgid(), 0
        cbf = write_pilatus_cbf(tmp_path_factory.mktemp("cbf") / "f.cbf").read_bytes()
        extra = '[logging]\nlevel = "DEBUG"\n'
        with running_chain(base.redis.url, workers_extra=extra, deadline_s=10.0) as chain:
            pid = chain.session(user, [esaf])
            yield LiveWorld(chain, pid, esaf, gid, base.data, cbf)


def beamline_dir(world: LiveWorld, name: str) -> Path:
    """A directory the ESAF group may write to, as a detector's would be."""
    directory = world.data / name
    directory.mkdir()
    os.chown(directory, os.getuid(), world.gid)
    directory.chmod(0o2775)
    return directory


def ask(world: LiveWorld, **fields: object) -> dict[str, object]:
    reply = world.chain.request({"pid": world.pid, "esaf": world.esaf, **fields})
    assert reply.error is None, reply.error
    return reply.job


def source_of(world: LiveWorld, fn: str, frame: int) -> str:
    """Where the worker found the last jpeg of ``fn`` frame ``frame`` (its DEBUG line)."""
    pattern = re.compile(rf"jpeg {re.escape(fn)} frame {frame}: (\w+)")
    found = wait_for(
        lambda: pattern.findall(world.chain.log_text()), timeout_s=5, what="the jpeg's log line"
    )
    return str(found[-1])


def latest(world: LiveWorld, directory: Path) -> dict[str, object]:
    reply = world.chain.request(
        {"type": "latest", "pid": world.pid, "esaf": world.esaf, "dir": str(directory)}
    )
    assert reply.error is None, reply.error
    return reply.meta


def test_a_frame_written_after_latest_is_served_from_memory(world: LiveWorld) -> None:
    directory = beamline_dir(world, "cbf")
    (directory / "run_0001.cbf").write_bytes(world.cbf)
    assert latest(world, directory)["frame"] == 1
    with open(directory / "run_0002.cbf", "wb") as stream:  # the detector's next frame
        stream.write(world.cbf)
    fn = str(directory / "run_0002.cbf")
    wait_for(
        lambda: f"live: {fn} frame 1 ready" in world.chain.log_text(),
        timeout_s=10,
        what="the new frame prepared",
    )
    found = latest(world, directory)
    assert found["frame"] == 2
    ask(world, type="jpeg", fn=fn, frame=1, xsize=1024)
    assert source_of(world, fn, 1) in ("image", "memory")
    assert f"latest {directory}: watch" in world.chain.log_text()


def test_appended_eiger_frames_through_the_chain(world: LiveWorld) -> None:
    directory = beamline_dir(world, "eiger")
    writer = LiveEigerWriter(
        directory, "live_001", geometry=centred_geometry(1028, 512, 75e-6), planned_frames=20
    )
    try:
        os.chown(writer.master, os.getuid(), world.gid)
        os.chown(writer.data_path, os.getuid(), world.gid)
        writer.write_frame()
        assert latest(world, directory)["frame"] == 1
        number = writer.write_frame()
        fn = str(writer.master)
        wait_for(
            lambda: f"live: {fn} frame {number} ready" in world.chain.log_text(),
            timeout_s=10,
            what="the appended frame prepared",
        )
        assert latest(world, directory)["frame"] == number
        ask(world, type="jpeg", fn=fn, frame=number, xsize=1024)
        assert source_of(world, fn, number) in ("image", "memory")
    finally:
        writer.close()


def test_a_view_prefetches_the_next_frame(world: LiveWorld) -> None:
    directory = beamline_dir(world, "prefetch")
    for number in range(1, 4):
        (directory / f"p_{number:04d}.cbf").write_bytes(world.cbf)
    first, second = str(directory / "p_0001.cbf"), str(directory / "p_0002.cbf")
    time.sleep(0.2)  # let any live reductions of the files written above finish
    ask(world, type="jpeg", fn=first, frame=1, xsize=700, colormap="heat")
    wait_for(
        lambda: f"prefetch: {second} frame 1 ready" in world.chain.log_text(),
        timeout_s=10,
        what="the neighbour prepared",
    )
    ask(world, type="jpeg", fn=second, frame=1, xsize=700, colormap="heat")
    assert source_of(world, second, 1) == "image"
