"""The serving processes by role, and their resident memory (VmRSS) from /proc.

A process is named by what it is (``serve2 worker alice:issoakesaf69101``), not by its pid,
so the same role can be compared at the start and at the end of a soak; a role whose pid
changed in between (a node killed, Redis restarted) is shown as restarted, not as growth.
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass
from pathlib import Path

from chain_common import children_of
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService

FLAG_GROWTH = 0.10
Snapshot = dict[str, tuple[int, int]]
"""Role name → (pid, VmRSS in KiB)."""


@dataclass(frozen=True)
class Processes:
    pids: dict[str, int]

    def workers_of(self, role: str) -> list[int]:
        return [pid for name, pid in self.pids.items() if name.startswith(f"{role} worker ")]


def serving_processes(service: LocalService, redis: EmbeddedRedis | None) -> Processes:
    """The broker, each node's manager, zygote and workers, and Redis, by role."""
    pids = {"broker": service.processes["proxy"].pid}
    for role, process in service.processes.items():
        if role == "proxy" or process.poll() is not None:
            continue
        pids[f"{role} manager"] = process.pid
        for zygote in children_of(process.pid):
            pids[f"{role} zygote"] = zygote
            for worker in children_of(zygote):
                pids[f"{role} worker {_identity(worker)}"] = worker
    if redis is not None and redis.process is not None:
        pids["redis-server"] = redis.process.pid
    return Processes(pids)


def snapshot(processes: Processes) -> Snapshot:
    found = {}
    for name, pid in processes.pids.items():
        rss = rss_kib(pid)
        if rss is not None:
            found[name] = (pid, rss)
    return found


@dataclass(frozen=True)
class MemoryRow:
    """One role's VmRSS after the warm-up, at 80 % of the run and at the end."""

    name: str
    start_mib: str
    mid_mib: str
    end_mib: str
    growth: str
    """Start → end, or why there is none (``new``, ``restarted``)."""
    late_growth: str
    """80 % → end: after both disruptions, what a leak would still add."""
    is_flagged: bool
    """Start → end growth of FLAG_GROWTH or more, by one process."""

    @property
    def flag(self) -> str:
        return f"≥{FLAG_GROWTH:.0%}" if self.is_flagged else ""


def growth_rows(before: Snapshot, mid: Snapshot, after: Snapshot) -> list[MemoryRow]:
    """A row for every role seen at any of the three times."""
    rows = []
    for name in sorted(set(before) | set(mid) | set(after), key=_role_order):
        start, middle, end = before.get(name), mid.get(name), after.get(name)
        rows.append(
            MemoryRow(
                name,
                _mib(start),
                _mib(middle),
                _mib(end),
                _growth(start, end),
                _growth(middle, end),
                _has_grown(start, end),
            )
        )
    return rows


def _mib(sample: tuple[int, int] | None) -> str:
    return f"{sample[1] / 1024:.1f}" if sample else "–"


def _growth(first: tuple[int, int] | None, last: tuple[int, int] | None) -> str:
    if first is None:
        return "new" if last else ""
    if last is None:
        return "gone"
    if first[0] != last[0]:
        return "restarted"
    return f"{last[1] / first[1] - 1:+.1%}"


def _has_grown(first: tuple[int, int] | None, last: tuple[int, int] | None) -> bool:
    """The same process, grown by FLAG_GROWTH or more."""
    if first is None or last is None or first[0] != last[0]:
        return False
    return last[1] >= first[1] * (1 + FLAG_GROWTH)


def rss_kib(pid: int) -> int | None:
    """VmRSS of a live process; None once it is gone or a zombie (which has none)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def _identity(pid: int) -> str:
    """login:group of a worker (its effective uid and gid)."""
    uid = gid = -1
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[2])
            elif line.startswith("Gid:"):
                gid = int(line.split()[2])
    except OSError:
        return f"pid {pid}"
    return f"{_login(uid)}:{_group(gid)}"


def _login(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _role_order(name: str) -> tuple[int, str]:
    rank = 0 if name == "broker" else 2 if name == "redis-server" else 1
    return rank, name
