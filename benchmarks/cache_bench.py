"""The cache through the whole chain: cold, warm in memory, warm from Redis, tiles, memory bound.

Run: ``python benchmarks/cache_bench.py`` (add ``--distinct 2000`` for a shorter memory run).
It starts a private Redis and the service twice as in production (`imageserver.local_service`):
once with the cache, once without (no memory budget, no Redis), on the 16M sample series of
``chain_bench`` (48 frames, written once), and prints one table of medians and p95. As root it
makes two throw-away users in one throw-away ESAF group, so "from Redis" is a second worker
process of the same ESAF; it removes them at the end. It also times, in this process, a whole
16M frame through Redis against decoding it from the file: why frames stay out of Redis.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from chain_bench import N_FRAMES, BenchUsers, ThreadClients, write_series_once
from imageserver.allocator import tune_allocator
from imageserver.cache.codec import FrameCodec
from imageserver.client import Reply
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.formats import open_frame
from imageserver.imaging.reduce import warm_up
from imageserver.local_service import LocalService
from imageserver.render import Look, ViewSpec, reduce_view, render_jpeg
from run import print_table

Row = tuple[str, list[float], str]
BENCH_ESAF = 69001
BENCH_GROUP = f"isbenchesaf{BENCH_ESAF}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("sample-data-chain"))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--budget-mib", type=int, default=512)
    args = parser.parse_args()
    tune_allocator()
    warm_up()
    master = write_series_once(args.data.resolve())
    work = Path(tempfile.mkdtemp(prefix="imageserver-cache-bench-", dir="/tmp"))
    work.chmod(0o755)
    redis_server = EmbeddedRedis(work / "redis").start()
    users = BenchUsers()
    is_root = os.geteuid() == 0
    if is_root:
        subprocess.run(["groupadd", BENCH_GROUP], check=True)
    rows: list[Row] = []
    try:
        rows += bench_frame_through_redis(master, redis_server)
        frames = iter(range(1, N_FRAMES + 1))
        budget = args.budget_mib << 20
        with running(work / "on", redis_server, f"memory_budget_bytes = {budget}\n") as on:
            rows += bench_cached(on, master, frames, args.runs, users, redis_server)
            rows += bench_memory_bound(on, master, users, args.distinct, budget)
        with running(work / "off", redis_server, "memory_budget_bytes = 0\n", shared=False) as off:
            rows += bench_uncached(off, master, args.runs, users)
    finally:
        redis_server.stop()
        users.remove()
        if is_root:
            subprocess.run(["groupdel", BENCH_GROUP], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    return 0


class running:  # noqa: N801 (used as a context manager, like open)
    """A LocalService with extra [cache] keys, optionally without the shared tier.

    It yields itself: ``service``, and ``clients`` (persistent ones, closed before it stops).
    """

    def __init__(
        self, directory: Path, server: EmbeddedRedis, cache_keys: str, *, shared: bool = True
    ) -> None:
        identity = '[identity]\nesaf_group_pattern = "isbenchesaf{esaf}"\n'
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


def bench_frame_through_redis(master: Path, server: EmbeddedRedis) -> list[Row]:
    """A decoded 16M frame stored in and read back from Redis, against decoding the file."""
    client = redis.Redis(port=server.port, socket_timeout=30)
    codec = FrameCodec()
    decode, round_trip = [], []
    for number in range(1, 6):
        started = time.perf_counter()
        frame = open_frame(master, number)
        decode.append(time.perf_counter() - started)
        client.set("bench:frame", codec.encode(frame))
        started = time.perf_counter()
        codec.decode(client.get("bench:frame"))
        round_trip.append(time.perf_counter() - started)
    client.delete("bench:frame")
    frame = open_frame(master, 1)
    view = reduce_view(frame, ViewSpec(master, xsize=1024))
    render = [timed(lambda c=c: render_jpeg(view, Look(contrast=30 + c))) for c in range(15)]
    tile = [
        timed(lambda c=c: render_jpeg(reduce_view(frame, tile_spec(master, c)), Look()))
        for c in range(16)
    ]
    return [
        ("in-process: 16M frame decoded from its file", decode, ""),
        ("in-process: 16M frame GET from Redis + decode (not done)", round_trip, "> file"),
        ("in-process floor: contrast + JPEG of a held 1024 view", render, ""),
        ("in-process floor: reduce + stats + JPEG of a 1024 ×4 tile", tile, ""),
    ]


def tile_spec(master: Path, index: int, xsize: int = 1024) -> ViewSpec:
    return ViewSpec(master, xsize=xsize, zoom=4, segcol=index % 4, segrow=index // 4)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def bench_cached(
    bench: running,
    master: Path,
    frames: Iterator[int],
    runs: int,
    users: BenchUsers,
    redis_server: EmbeddedRedis,
) -> list[Row]:
    service = bench.service
    is_root = os.geteuid() == 0
    esafs = [BENCH_ESAF] if is_root else []
    user_a = users.make()
    pid_a = service.session(user_a, esafs)
    esaf = BENCH_ESAF if is_root else 0
    request = requester(bench.clients, pid_a, master, esaf)
    warm_heap(request, [next(frames) for _ in range(heap_frames(service))])
    cold = [request(next(frames)) for _ in range(runs)]
    frame = next(frames)
    request(frame)
    contrast = [request(frame, contrast=30 + i) for i in range(runs)]
    request(frame, contrast=500, wval=2)
    repeat = [request(frame, contrast=500, wval=2) for _ in range(runs)]
    tiles_1024, tiles_256 = [], []
    for _ in range(max(1, runs // 8)):
        frame = next(frames)
        request(frame, xsize=64)  # the frame is decoded and held
        grid = [(c, r) for r in range(4) for c in range(4)]
        tiles_1024 += [request(frame, zoom=4, segcol=c, segrow=r) for c, r in grid]
        tiles_256 += [request(frame, xsize=256, zoom=4, segcol=c, segrow=r) for c, r in grid]
    mosaic_256, mosaic_1024 = [], []
    for _ in range(3):
        mosaic_256.append(all_tiles(request, next(frames), 256))
        mosaic_1024.append(all_tiles(request, next(frames), 1024))
    rows: list[Row] = [
        ("cache on: cold 16M frame → 1024 JPEG", cold, ""),
        ("warm in memory: same view, new contrast", contrast, "≤ 4"),
        ("exact repeat", repeat, "≤ 1.5"),
        ("×4 zoom tile, 1024 wide, of a decoded frame", tiles_1024, "≤ 8"),
        ("×4 zoom tile, 256 wide, of a decoded frame", tiles_256, ""),
        ("16 tiles ×4, 256 wide, of a new frame, at once (wall)", mosaic_256, "≤ 1.5× cold"),
        ("16 tiles ×4, 1024 wide, of a new frame, at once (wall)", mosaic_1024, ""),
    ]
    if is_root:
        rows += bench_shared(bench, master, request, users, redis_server)
    return rows


def bench_shared(
    bench: running,
    master: Path,
    request_a: Callable[..., float],
    users: BenchUsers,
    redis_server: EmbeddedRedis,
) -> list[Row]:
    """Views made by user A's worker, read by user B's worker (same ESAF) from Redis."""
    pid_b = bench.service.session(users.make(), [BENCH_ESAF])
    request_b = requester(bench.clients, pid_b, master, BENCH_ESAF)
    warm_heap(request_b, list(range(31, 31 + heap_frames(bench.service))))
    cache_db = redis.Redis(port=redis_server.port, db=1)
    from_redis = []
    for index in range(15):
        frame, xsize = 2 + index % 3, 1000 - index  # a view B has never seen
        request_a(frame, xsize=xsize)
        wait_for_views(cache_db, index + 1)
        from_redis.append(request_b(frame, xsize=xsize, contrast=40))
    return [("warm in Redis: another worker of the ESAF, same view", from_redis, "≤ 8")]


def heap_frames(service: LocalService) -> int:
    """Frames (90 MB each with the mask) that fill a worker's budget once, and then some."""
    return service.settings.cache.memory_budget_bytes // (90 << 20) + 2


def warm_heap(request: Callable[..., float], frames: list[int]) -> None:
    """Bring a new worker to its steady state: its budget filled once, the heap grown.

    A long-running worker recycles the memory of evicted entries. A new one grows its heap
    first, and on this benchmark's virtual machine every first touch of a fresh page is
    expensive (a 16M decode into new memory takes 90 ms instead of 30), which would be
    charged to whichever row happened to run first.
    """
    for frame in frames:
        request(frame, xsize=64)


def wait_for_views(cache_db: redis.Redis, at_least: int) -> None:
    deadline = time.monotonic() + 5
    while len(cache_db.keys(f"imageserver:{grp.getgrnam(BENCH_GROUP).gr_gid}:view:*")) < at_least:
        if time.monotonic() > deadline:
            raise SystemExit("views do not reach Redis")
        time.sleep(0.002)


def bench_uncached(bench: running, master: Path, runs: int, users: BenchUsers) -> list[Row]:
    pid = bench.service.session(users.make(), [])
    request = requester(bench.clients, pid, master, 0)
    request(1, xsize=64)
    cold = [request(1 + i % N_FRAMES) for i in range(runs)]
    contrast = [request(5, contrast=30 + i) for i in range(runs)]
    tiles = [request(6, zoom=4, segcol=c, segrow=r) for r in range(4) for c in range(4)]
    mosaic = [all_tiles(request, 7 + i, 256) for i in range(3)]
    return [
        ("cache off: 16M frame → 1024 JPEG", cold, ""),
        ("cache off: same view, new contrast", contrast, ""),
        ("cache off: ×4 zoom tile, 1024 wide", tiles, ""),
        ("cache off: 16 tiles ×4, 256 wide, at once (wall)", mosaic, ""),
    ]


def bench_memory_bound(
    bench: running, master: Path, users: BenchUsers, distinct: int, budget: int
) -> list[Row]:
    """RSS of one worker through a stream of distinct requests (8 frames, varied views)."""
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
    name = (
        f"{distinct} distinct requests: worker RSS {baseline >> 20} → {after >> 20} MiB"
        f" (peak {peak >> 20}; budget {budget >> 20} MiB)"
    )
    return [(name, times, f"≤ {(baseline + budget) >> 20} MiB + fixed")]


def requester(clients: ThreadClients, pid: str, master: Path, esaf: int) -> Callable[..., float]:
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


def all_tiles(request: Callable[..., float], frame: int, xsize: int) -> float:
    """Wall time of the 16 tiles of a ×4 zoom asked for at once, as a map viewer does."""
    barrier = threading.Barrier(16)

    def tile(col: int, row: int) -> None:
        barrier.wait()
        request(frame, xsize=xsize, zoom=4, segcol=col, segrow=row)

    threads = [threading.Thread(target=tile, args=(c, r)) for r in range(4) for c in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def worker_of(service: LocalService, uid: int) -> int:
    zygotes = children_of(service.manager_pid())
    for pid in (pid for zygote in zygotes for pid in children_of(zygote)):
        if os.stat(f"/proc/{pid}").st_uid == uid:
            return pid
    raise SystemExit(f"no worker runs as uid {uid}")


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{parent}\n" in status:
                found.append(int(entry))
    return found


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") << 10


def peak_rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM") << 10


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for process {pid}")


if __name__ == "__main__":
    sys.exit(main())
