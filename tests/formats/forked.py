"""Test code run in a forked child, as an unprivileged identity when the tests run as root.

Root ignores file modes and CI runs as root, so access tests drop privileges in a child and
pytest keeps root to set files up and clean them away. A forked child must not decode
bitshuffle once this process has (its OpenMP pool hangs forked children): Eiger access tests
start a fresh interpreter instead (test_revoked_access.py).
"""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

CHILD_DEADLINE_S = 60.0


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def unprivileged(groups: tuple[int, ...] = ()) -> Identity | None:
    """'nobody' with ``groups`` when running as root, else None (this user is unprivileged)."""
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to drop to")
    gid = groups[0] if groups else nobody.pw_gid
    return Identity(nobody.pw_uid, gid, groups or (gid,))


def become(identity: Identity | None) -> None:
    """Drop every privilege for good (in a child): groups first, then gid, then uid."""
    if identity is None:
        return
    os.setgroups(list(identity.groups))
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)


def in_child(work: Callable[[], Any], identity: Identity | None) -> Any:
    """``work()``'s JSON-able result, computed in a forked child running as ``identity``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os.close(read_fd)
        try:
            become(identity)
            report: dict[str, Any] = {"value": work()}
        except BaseException as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_fd, "w") as stream:
            json.dump(report, stream)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as stream:
        if not select.select([stream], [], [], CHILD_DEADLINE_S)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child did not report within {CHILD_DEADLINE_S} s")
        text = stream.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(text)
    if "error" in report:
        pytest.fail(f"the child failed: {report['error']}")
    return report["value"]
