"""Child processes in process groups of their own, so a deadline or a cancel ends all of them.

An indexing program starts programs of its own (DIALS steps, RAPD's helpers); killing only the
direct child would leave them running and holding our pipes. Each child therefore leads a new
process group (a new session), and stopping it means SIGTERM to the group, a short grace, then
SIGKILL to the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

TERM_GRACE_S = 2.0
"""How long a group gets between SIGTERM and SIGKILL: time for DIALS to stop its own pool."""


def kill_group(process: subprocess.Popen[bytes], *, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace_s``, and reap the child."""
    _signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # The leader may have exited on SIGTERM while members of its group did not.
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def reap_group(process: subprocess.Popen[bytes]) -> None:
    """After the leader exited on its own: SIGKILL whatever it left behind in its group."""
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is empty
        os.killpg(pgid, signum)


def seconds_left(deadline: float) -> float:
    """Time to the ``time.monotonic()`` deadline, never negative."""
    return max(0.0, deadline - time.monotonic())
