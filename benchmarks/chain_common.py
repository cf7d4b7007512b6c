"""What the chain benchmarks share: the sample series, the service, clients, users, processes.

`chain_bench` and `cache_bench` both time requests through proxy → manager → worker on the
same 16M series, as throw-away users of one throw-away ESAF group, and look at the serving
processes through /proc; this module holds those parts once.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis

from imageserver.client import Client, Reply
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService
from imageserver.sampledata.dataset import EIGER16M_STEM, EIGER_PIXEL_M
from imageserver.sampledata.eiger import write_eiger_series
from imageserver.sampledata.pattern import centred_geometry

Row = tuple[str, list[float], str]
Request = Callable[..., float]
N_FRAMES = 48
FRAME_MIB = 90
"""A decoded 16M frame with its mask, as the worker's cache charges it."""
BENCH_ESAF = 69001
BENCH_GROUP = f"isbenchesaf{BENCH_ESAF}"


def write_series_once(directory: Path) -> Path:
    """The 16M series every chain benchmark reads, written on first use (it takes a while)."""
    master = directory / f"{EIGER16M_STEM}_master.h5"
    if not master.exists():
        print(f"writing a {N_FRAMES}-frame 16M series to {directory} ...", file=sys.stderr)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        geometry = centred_geometry(4148, 4362, EIGER_PIXEL_M)
        write_eiger_series(directory, EIGER16M_STEM, geometry=geometry, n_frames=N_FRAMES)
        for path in directory.iterdir():
            path.chmod(0o644)
    return master


class ThreadClients:
    """A persistent REQ socket per thread, as each web-tier process holds one (is.js)."""

    def __init__(self, service: LocalService) -> None:
        self._service = service
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def request(self, request: dict[str, object], timeout_s: float = 60.0) -> Reply:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._service.client()
            with self._lock:
                self._clients.append(client)
        return client.request(request, timeout_s=timeout_s)

    def close(self) -> None:
        """Once every thread that asked is done: the service's context waits for them."""
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


class Crowd:
    """Threads that send requests at once, kept between batches so each keeps its socket.

    A new thread per request would time a socket's creation and connection as well.
    """

    def __init__(self, size: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="crowd")

    def wall(self, calls: list[Callable[[], object]]) -> float:
        """Seconds from sending the first of ``calls`` to the last answer."""
        started = time.perf_counter()
        for future in [self._pool.submit(call) for call in calls]:
            future.result()
        return time.perf_counter() - started

    def close(self) -> None:
        self._pool.shutdown()


class BenchUsers:
    """Throw-away accounts and ESAF group (root only), so each is a new identity for the manager.

    Not root, every "user" is the invoking one and there is no ESAF group.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.is_root = os.geteuid() == 0
        self._has_group = False

    def make(self) -> str:
        if not self.is_root:
            return pwd.getpwuid(os.getuid()).pw_name
        name = f"isbench{os.urandom(3).hex()}"
        subprocess.run(["useradd", "--create-home", "--user-group", name], check=True)
        self.names.append(name)
        return name

    def make_esaf_group(self) -> list[int]:
        """The ESAFs a session may name: the bench ESAF as root, else none."""
        if not self.is_root:
            return []
        if not self._has_group:
            subprocess.run(["groupadd", BENCH_GROUP], check=True)
            self._has_group = True
        return [BENCH_ESAF]

    def remove(self) -> None:
        for name in self.names:
            subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        self.names.clear()
        if self._has_group:
            subprocess.run(["groupdel", BENCH_GROUP], capture_output=True, check=False)
            self._has_group = False


class running:  # noqa: N801 (used as a context manager, like open)
    """A LocalService with extra [cache] keys, optionally without the shared tier.

    It yields itself: ``service``, and ``clients`` (persistent ones, closed before it stops).
    """

    def __init__(
        self, directory: Path, server: EmbeddedRedis, cache_keys: str, *, shared: bool = True
    ) -> None:
        identity = '[identity]\nesaf_group_pattern = "isbenchesaf{esaf}"\n'  # BENCH_GROUP
        self.service = LocalService(directory, server.url, extra_config=cache_keys + identity)
        if not shared:  # the generated config names the Redis; empty turns the tier off
            text = self.service.config.read_text()
            cache_url = server.url.rsplit("/", 1)[0] + "/1"
            self.service.config.write_text(text.replace(f'"{cache_url}"', '""'))
        self.clients = ThreadClients(self.service)

    def __enter__(self) -> running:
        self.service.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.clients.close()
        self.service.stop()

    def serving_pids(self) -> list[int]:
        """The proxy and the manager: with the manager's descendants, all that serves."""
        return [self.service.processes["proxy"].pid, self.service.manager_pid()]


def requester(clients: ThreadClients, pid: str, master: Path, esaf: int) -> Request:
    """A function that sends one jpeg request of ``master`` and returns its round trip."""

    def request(frame: int, **fields: object) -> float:
        job = {"type": "jpeg", "pid": pid, "esaf": esaf, "fn": str(master), "frame": frame}
        job.update({"xsize": 1024, **fields})
        started = time.perf_counter()
        reply = clients.request(job)
        elapsed = time.perf_counter() - started
        check(reply)
        return elapsed

    return request


def check(reply: Reply) -> None:
    if reply.error is not None or "error" in reply.job:
        raise SystemExit(f"request failed: {reply.error or reply.job['error']}")


def all_tiles(crowd: Crowd, request: Request, frame: int, xsize: int) -> float:
    """Wall time of the 16 tiles of a ×4 zoom asked for at once, as a map viewer does."""
    grid = [(c, r) for r in range(4) for c in range(4)]
    return crowd.wall(
        [lambda c=c, r=r: request(frame, xsize=xsize, zoom=4, segcol=c, segrow=r) for c, r in grid]
    )


def heap_frames(service: LocalService) -> int:
    """Frames (90 MB each with the mask) that fill a worker's budget once, and then some."""
    return service.settings.cache.memory_budget_bytes // (FRAME_MIB << 20) + 2


def warm_heap(request: Request, frames: list[int]) -> None:
    """Bring a new worker to its steady state: its budget filled once, the heap grown.

    A long-running worker recycles the memory of evicted entries. A new one grows its heap
    first, and on this benchmark's virtual machine every first touch of a fresh page is
    expensive (a 16M decode into new memory takes 90 ms instead of 30), which would be
    charged to whichever row happened to run first.
    """
    for frame in frames:
        request(frame, xsize=64)


class SharedViews:
    """The views the bench ESAF's workers stored in Redis, to wait for a write-behind."""

    def __init__(self, server: EmbeddedRedis) -> None:
        self._db = redis.Redis(port=server.port, password=server.password, db=1)

    def count(self) -> int:
        pattern = f"imageserver:{grp.getgrnam(BENCH_GROUP).gr_gid}:view:*"
        return sum(1 for _ in self._db.scan_iter(pattern, count=1000))

    def settle(self, quiet_s: float = 0.1) -> None:
        """Until no view arrives for ``quiet_s``: writes behind of earlier requests done."""
        previous, current = -1, self.count()
        while current != previous:
            time.sleep(quiet_s)
            previous, current = current, self.count()

    def wait_beyond(self, count: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count() <= count:
            if time.monotonic() > deadline:
                raise SystemExit("views do not reach Redis")
            time.sleep(0.002)


# -- the serving processes --------------------------------------------------------------------


def worker_of(service: LocalService, uid: int) -> int:
    zygotes = children_of(service.manager_pid())
    for pid in (pid for zygote in zygotes for pid in children_of(zygote)):
        if os.stat(f"/proc/{pid}").st_uid == uid:
            return pid
    raise SystemExit(f"no worker runs as uid {uid}")


def stop_worker(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM, as the manager retires a worker, and wait until it is gone (memory freed)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline += timeout_s
        time.sleep(0.005)


def children_of(parent: int) -> list[int]:
    return [pid for pid, (ppid, _, _) in process_table().items() if ppid == parent]


def process_table() -> dict[int, tuple[int, int, int]]:
    """pid → (parent pid, user ticks, system ticks) of every process, from /proc/PID/stat."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
            table[int(entry)] = (int(fields[1]), int(fields[11]), int(fields[12]))
    return table


def tree_times(roots: list[int]) -> dict[int, tuple[int, int]]:
    """pid → (user, system) ticks of ``roots`` and all their descendants."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1:]
        todo += children.get(pid, [])
    return found


@dataclass
class Samples:
    """Round trips, and the CPU the serving processes spent on them (clock ticks).

    A process that started during a sample (a worker forked for it) is charged all its
    time; one that ended during a sample is not counted. Ticks are 10 ms, so shares of
    short requests mean something only summed over many samples.
    """

    roots: Callable[[], list[int]]
    seconds: list[float] = field(default_factory=list)
    user_ticks: int = 0
    system_ticks: int = 0
    is_metered: bool = True
    """False for times measured without looking at the processes."""
    paired: list[float] = field(default_factory=list)
    """The same work in this process right after each sample, where a row takes it: the
    VM's speed drifts within minutes, so only a paired ratio compares the two fairly."""

    def measure(self, call: Callable[[], float]) -> None:
        """Run ``call`` (it returns its own time) between two looks at the processes."""
        before = tree_times(self.roots())
        self.seconds.append(call())
        for pid, (user, system) in tree_times(self.roots()).items():
            user_0, system_0 = before.get(pid, (0, 0))
            self.user_ticks += user - user_0
            self.system_ticks += system - system_0

    @property
    def cpu_s(self) -> float:
        return (self.user_ticks + self.system_ticks) / os.sysconf("SC_CLK_TCK")

    @property
    def system_share(self) -> float | None:
        total = self.user_ticks + self.system_ticks
        return self.system_ticks / total if total else None


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") << 10


def peak_rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM") << 10


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise SystemExit(f"no {field_name} for process {pid}")


def bench_memory_bound(
    bench: running, master: Path, users: BenchUsers, distinct: int, budget: int
) -> Row:
    """RSS of one new worker through a stream of distinct requests (8 frames, varied views).

    The worker is stopped afterwards (as root), so its memory does not weigh on later rows.
    """
    user = users.make()
    pid = bench.service.session(user, [])
    request = requester(bench.clients, pid, master, 0)
    request(40, xsize=64)
    worker = worker_of(bench.service, pwd.getpwnam(user).pw_uid)
    baseline = rss_bytes(worker)
    times = []
    for i in range(distinct):
        frame = 40 + (i // 50) % 8  # 8 × 90 MB of frames, more than the budget, 50 views each
        zoom = 1 + i % 4
        times.append(
            request(
                frame,
                xsize=64 + i % 397,
                zoom=zoom,
                segcol=(i // 4) % zoom,
                segrow=(i // 16) % zoom,
                contrast=1 + i // 397,  # with xsize, makes every request distinct
            )
        )
    after = rss_bytes(worker)
    peak = peak_rss_bytes(worker)
    if users.is_root:
        stop_worker(worker)
    name = (
        f"RSS, {distinct} distinct: {baseline >> 20}→{after >> 20} MiB"
        f" (peak {peak >> 20}; budget {budget >> 20})"
    )
    return (name, times, f"≤ {(baseline + budget) >> 20} MiB + fixed")


def ms_quantile(seconds: list[float], quantile: float) -> str:
    """A column cell: the median (0.5) or another quantile of the samples, in ms."""
    if not seconds:
        return ""
    ms = sorted(s * 1000 for s in seconds)
    if quantile == 0.5:
        return f"{statistics.median(ms):.1f}"
    return f"{ms[min(len(ms) - 1, round(quantile * (len(ms) - 1)))]:.1f}"
