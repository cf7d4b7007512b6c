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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from chain_common import (
    BENCH_ESAF,
    N_FRAMES,
    BenchUsers,
    Crowd,
    Request,
    Row,
    SharedViews,
    all_tiles,
    bench_memory_bound,
    heap_frames,
    requester,
    running,
    warm_heap,
    write_series_once,
)
from imageserver.allocator import tune_allocator
from imageserver.cache.codec import FrameCodec
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.formats import open_frame
from imageserver.imaging.reduce import warm_up
from imageserver.render import Look, ViewSpec, reduce_view, render_jpeg
from run import print_table


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
    crowd = Crowd()
    rows: list[Row] = []
    try:
        esafs = users.make_esaf_group()
        rows += bench_frame_through_redis(master, redis_server)
        frames = iter(range(1, N_FRAMES + 1))
        budget = args.budget_mib << 20
        with running(work / "on", redis_server, f"memory_budget_bytes = {budget}\n") as on:
            rows += bench_cached(on, crowd, master, frames, args.runs, users, esafs, redis_server)
            rows.append(bench_memory_bound(on, master, users, args.distinct, budget))
        with running(work / "off", redis_server, "memory_budget_bytes = 0\n", shared=False) as off:
            rows += bench_uncached(off, crowd, master, args.runs, users)
            crowd.close()
    finally:
        redis_server.stop()
        users.remove()
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    return 0


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
    crowd: Crowd,
    master: Path,
    frames: Iterator[int],
    runs: int,
    users: BenchUsers,
    esafs: list[int],
    redis_server: EmbeddedRedis,
) -> list[Row]:
    service = bench.service
    pid_a = service.session(users.make(), esafs)
    request = requester(bench.clients, pid_a, master, esafs[0] if esafs else 0)
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
        request(frame, xsize=64)  # viewed whole first; its tiles then share decoded bands
        grid = [(c, r) for r in range(4) for c in range(4)]
        tiles_1024 += [request(frame, zoom=4, segcol=c, segrow=r) for c, r in grid]
        tiles_256 += [request(frame, xsize=256, zoom=4, segcol=c, segrow=r) for c, r in grid]
    mosaic_256, mosaic_1024 = [], []
    for _ in range(3):
        mosaic_256.append(all_tiles(crowd, request, next(frames), 256))
        mosaic_1024.append(all_tiles(crowd, request, next(frames), 1024))
    rows: list[Row] = [
        ("cache on: cold 16M frame → 1024 JPEG", cold, ""),
        ("warm in memory: same view, new contrast", contrast, "≤ 4"),
        ("exact repeat", repeat, "≤ 1.5"),
        ("×4 zoom tiles, 1024 wide, one by one, of a viewed frame", tiles_1024, "≤ 8"),
        ("×4 zoom tiles, 256 wide, one by one, of a viewed frame", tiles_256, ""),
        ("16 tiles ×4, 256 wide, of a new frame, at once (wall)", mosaic_256, "≤ 1.5× cold"),
        ("16 tiles ×4, 1024 wide, of a new frame, at once (wall)", mosaic_1024, ""),
    ]
    if esafs:
        rows += bench_shared(bench, master, request, users, redis_server)
    return rows


def bench_shared(
    bench: running,
    master: Path,
    request_a: Request,
    users: BenchUsers,
    redis_server: EmbeddedRedis,
) -> list[Row]:
    """Views made by user A's worker, read by user B's worker (same ESAF) from Redis."""
    pid_b = bench.service.session(users.make(), [BENCH_ESAF])
    request_b = requester(bench.clients, pid_b, master, BENCH_ESAF)
    warm_heap(request_b, list(range(31, 31 + heap_frames(bench.service))))
    views = SharedViews(redis_server)
    from_redis = []
    for index in range(15):
        frame, xsize = 2 + index % 3, 1000 - index  # a view B has never seen
        stored = views.count()
        request_a(frame, xsize=xsize)
        views.wait_beyond(stored)
        from_redis.append(request_b(frame, xsize=xsize, contrast=40))
    return [("warm in Redis: another worker of the ESAF, same view", from_redis, "≤ 8")]


def bench_uncached(
    bench: running, crowd: Crowd, master: Path, runs: int, users: BenchUsers
) -> list[Row]:
    pid = bench.service.session(users.make(), [])
    request = requester(bench.clients, pid, master, 0)
    request(1, xsize=64)
    cold = [request(1 + i % N_FRAMES) for i in range(runs)]
    contrast = [request(5, contrast=30 + i) for i in range(runs)]
    tiles = [request(6, zoom=4, segcol=c, segrow=r) for r in range(4) for c in range(4)]
    mosaic = [all_tiles(crowd, request, 7 + i, 256) for i in range(3)]
    return [
        ("cache off: 16M frame → 1024 JPEG", cold, ""),
        ("cache off: same view, new contrast", contrast, ""),
        ("cache off: ×4 zoom tile, 1024 wide", tiles, ""),
        ("cache off: 16 tiles ×4, 256 wide, at once (wall)", mosaic, ""),
    ]


if __name__ == "__main__":
    sys.exit(main())
