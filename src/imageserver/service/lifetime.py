"""Process lifetimes on Linux: a child that dies with its parent, whatever killed the parent.

``PR_SET_PDEATHSIG`` asks the kernel to signal a process when the thread that forked it
ends. The kernel clears the setting on fork and whenever the process's credentials change,
so a worker arms it *after* dropping its privileges, then checks that its parent is still
the one it was forked by (the parent may have died in between). A worker also polls its
parent now and then: a second line of defence that needs nothing from the kernel.
"""

from __future__ import annotations

import ctypes
import os

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_PR_SET_DUMPABLE = 4


def set_parent_death_signal(signum: int) -> None:
    """Receive ``signum`` when the parent ends (OSError where the kernel refuses)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")


def parent_death_signal() -> int:
    """The signal this process receives when its parent ends; 0 for none."""
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(0)
    if libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_GET_PDEATHSIG): {os.strerror(errno)}")
    return value.value


def forbid_inspection() -> None:
    """Not dumpable: other processes of the same user can neither ptrace this one nor read
    its memory (the ESAF's Redis password), and it leaves no core file."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_DUMPABLE): {os.strerror(errno)}")


def is_orphan(parent_pid: int) -> bool:
    """Whether the process that forked us has gone (we were re-parented)."""
    return os.getppid() != parent_pid
