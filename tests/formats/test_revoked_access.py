"""Access taken away from an open HDF5 file is seen on the next read, not when its handle ages.

Open Eiger files stay open between requests; the handle cache keys them by ctime too, so a
chmod or chgrp (both change the ctime) closes the cached handle and the OS checks the reader's
access again. The reader here is a real unprivileged identity ('nobody', in a group made for
the test) in a fresh interpreter: a forked child would hang in bitshuffle, whose OpenMP pool
this process has already started.
"""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from forked import Identity, unprivileged

REPLY_DEADLINE_S = 60.0
READER = r"""
import json, os, sys
from pathlib import Path

from imageserver.formats import READERS, open_frame
from imageserver.formats.eiger import EigerReader

eiger = next(reader for reader in READERS if isinstance(reader, EigerReader))

identity = json.loads(sys.argv[1])
if identity is not None:
    os.setgroups(identity["groups"])
    os.setresgid(identity["gid"], identity["gid"], identity["gid"])
    os.setresuid(identity["uid"], identity["uid"], identity["uid"])
print(json.dumps({"uid": os.getuid(), "groups": os.getgroups()}), flush=True)
for line in sys.stdin:
    path, number, via = json.loads(line)
    try:
        read = open_frame if via == "open_frame" else eiger.read_frame
        frame = read(Path(path), number)
        reply = {"read": int(frame.pixels.astype("int64").sum())}
    except Exception as exc:
        reply = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(reply), flush=True)
"""


@dataclass(frozen=True)
class Groups:
    member: int
    """The reader's only group."""
    other: int
    """A group the reader is not in."""


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def groups() -> Iterator[Groups | None]:
    """Two new Unix groups when running as root (removed afterwards), else None."""
    if os.geteuid() != 0:
        yield None
        return
    names = [f"isfmt{uuid.uuid4().hex[:8]}{suffix}" for suffix in "ab"]
    created: list[str] = []
    try:
        for name in names:
            _run("groupadd", name)
            created.append(name)
        member, other = (grp.getgrnam(name).gr_gid for name in names)
        yield Groups(member=member, other=other)
    finally:
        for name in created:
            _run("groupdel", name)


class Reader:
    """A fresh interpreter running as ``identity`` that reads frames on request."""

    def __init__(self, identity: Identity | None) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        as_json = None if identity is None else dataclasses.asdict(identity)
        self._process = subprocess.Popen(
            [sys.executable, "-c", READER, json.dumps(as_json)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.started = self._reply()

    def read(self, path: Path, number: int, via: str = "open_frame") -> dict[str, Any]:
        """Frame ``number`` through the package's call, or ``via="reader"`` through the Eiger
        reader alone (the call also opens the named file to detect its format; the reader
        goes by its cached handles)."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps([str(path), number, via]) + "\n")
        self._process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        assert self._process.stdout is not None
        self._process.stdout.close()
        self._stderr.close()

    def _reply(self) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        if not select.select([stdout], [], [], REPLY_DEADLINE_S)[0]:
            self._process.kill()
            pytest.fail(f"the reader did not answer within {REPLY_DEADLINE_S} s")
        line = stdout.readline()
        if not line:
            self._stderr.seek(0)
            pytest.fail(f"the reader ended: {self._stderr.read().decode(errors='replace')}")
        reply: dict[str, Any] = json.loads(line)
        return reply


@pytest.fixture(scope="module")
def reader(groups: Groups | None) -> Iterator[Reader]:
    """One reader for the module (an interpreter takes seconds to start); its caches persist
    between tests, as a worker's do between requests."""
    identity = unprivileged((groups.member,) if groups else ())
    started = Reader(identity)
    if identity is not None:
        assert started.started == {"uid": identity.uid, "groups": list(identity.groups)}
    yield started
    started.close()


@pytest.fixture
def series(eiger_series: Path, open_dir: Path) -> Path:
    """A copy of the 5-frame series (frames 1–2 in data file 1) in a directory all may enter."""
    for source in eiger_series.parent.iterdir():
        shutil.copy(source, open_dir / source.name)
        (open_dir / source.name).chmod(0o644)
    return open_dir / eiger_series.name


def _target(series: Path, which: str) -> Path:
    return series if which == "master" else series.with_name("series_data_000001.h5")


def assert_denied(reply: dict[str, Any], target: Path) -> None:
    assert reply.get("error") == "FileAccessError", reply
    assert target.name in reply["message"] and "ermission denied" in reply["message"], reply


VIAS = ["open_frame", "reader"]


@pytest.mark.parametrize("which", ["master", "data"])
def test_chmod_000_refuses_the_very_next_read(reader: Reader, series: Path, which: str) -> None:
    target = _target(series, which)
    first = reader.read(series, 1)
    assert "read" in first, first
    assert reader.read(series, 1, via="reader") == first
    assert "read" in reader.read(series, 2)

    target.chmod(0o000)
    for via in VIAS:
        assert_denied(reader.read(series, 1, via), target)
        assert_denied(reader.read(series, 2, via), target)  # its neighbour in the file too

    target.chmod(0o644)  # given back: read again
    for via in VIAS:
        assert reader.read(series, 1, via) == first
    if which == "data":
        assert "read" in reader.read(series, 3)  # other data files were never affected


@pytest.mark.parametrize("which", ["master", "data"])
def test_a_group_change_refuses_the_very_next_read(
    reader: Reader, series: Path, groups: Groups | None, which: str
) -> None:
    if groups is None:
        pytest.skip("creating groups and changing a file's group needs root")
    target = _target(series, which)
    os.chown(target, 0, groups.member)
    target.chmod(0o640)  # root may write, the reader's group may read, nobody else
    first = reader.read(series, 1)
    assert "read" in first, first
    assert reader.read(series, 1, via="reader") == first

    os.chown(target, -1, groups.other)  # chgrp: the reader is not in this group
    for via in VIAS:
        assert_denied(reader.read(series, 1, via), target)

    os.chown(target, -1, groups.member)
    for via in VIAS:
        assert reader.read(series, 1, via) == first
