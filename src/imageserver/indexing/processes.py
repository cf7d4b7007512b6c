"""Child processes in process groups of their own, so a deadline or a cancel ends all of them.

An indexing program starts programs of its own (DIALS steps, RAPD's helpers); killing only the
direct child would leave them running and holding our pipes. Each child therefore leads a new
process group (a new session), and stopping it means SIGTERM to the group, a short grace, then
SIGKILL to the group.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

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


def die_with_parent() -> None:
    """In a child before exec: SIGKILL when the parent dies, even by SIGKILL (Linux only).

    The indexer stops its DIALS step itself on SIGTERM; this covers the runner's SIGKILL.
    Safe as a ``preexec_fn`` only in a single-threaded parent, which the indexer is.
    """
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def seconds_left(deadline: float) -> float:
    """Time to the ``time.monotonic()`` deadline, never negative."""
    return max(0.0, deadline - time.monotonic())
