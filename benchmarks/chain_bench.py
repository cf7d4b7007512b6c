"""What a user's actions cost through the whole chain: in-process, new worker, steady worker.

Run: ``python benchmarks/chain_bench.py`` (or ``scripts/bench --chain``; ``--runs 3`` for a
quick look). It starts a private Redis, the proxy and the manager as in production
(`imageserver.local_service`), writes a 48-frame 16M sample series once, and prints one
table: a row per user action, with

- *in-process*: the same work through the project's API in this process (`render_file`,
  or the worker's `CachedRenderer` from `renderer_for_worker`), no sockets, no fork;
- *new worker*: each sample in a worker forked for it (as root: a throw-away user per
  sample, stopped after it). Before its sample the worker answered an 8 px blank (the
  fork) and a meta request (its first look at the series reads the series' layout and
  pixel mask); two rows time those two first requests alone. What remains is a heap not
  grown yet: on a virtual machine every first touch of a fresh page is costly;
- *steady*: one long-running worker, its 512 MiB cache budget filled once first, so later
  frames reuse the memory of evicted ones (a second one of the same ESAF reads from Redis);
- *sys %*: system / (user + system) CPU of the serving processes (proxy, manager, zygote,
  workers: /proc/PID/stat) summed over that column's samples, and that CPU in seconds.

A target is met (✓) when the column's median is within it. Rows that need a second
identity (Redis tier, new workers) need root, as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chain_common import (
    N_FRAMES,
    BenchUsers,
    Crowd,
    Request,
    Samples,
    SharedViews,
    ThreadClients,
    all_tiles,
    bench_memory_bound,
    check,
    heap_frames,
    ms_quantile,
    requester,
    running,
    stop_worker,
    warm_heap,
    worker_of,
    write_series_once,
)
from imageserver.allocator import tune_allocator
from imageserver.cache.renderer import CachedRenderer, renderer_for_worker
from imageserver.config import CacheSettings, WorkerSettings
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.imaging.reduce import warm_up
from imageserver.render import Look, ViewSpec, render_file
from imageserver.service import jobs
from run import machine_line

BUDGET_MIB = 512
LEGACY_10X_MS = 35.0
"""10× faster than the deprecated C server's cold 16M frame → 1024 JPEG (378 ms, README),
rounded as the performance issue states it."""


@dataclass(frozen=True)
class Target:
    """A row's goal: a time, and/or a multiple of a cold median, and a system-time share."""

    text: str
    ms: float | None = None
    per_core_cold: float | None = None
    """× the in-process cold median."""
    per_cold: float | None = None
    """× the cold median of the same column."""
    system_share: float | None = None

    @property
    def is_checkable(self) -> bool:
        return any(
            limit is not None
            for limit in (self.ms, self.per_core_cold, self.per_cold, self.system_share)
        )

    def is_met(self, samples: Samples, core_cold_s: float, cold_s: float) -> bool:
        limits = [
            self.ms / 1000 if self.ms else None,
            self.per_core_cold * core_cold_s if self.per_core_cold else None,
            self.per_cold * cold_s if self.per_cold else None,
        ]
        median_s = statistics.median(samples.seconds)
        is_fast = all(median_s <= limit for limit in limits if limit is not None)
        share = samples.system_share or 0.0
        return is_fast and (self.system_share is None or share <= self.system_share)


@dataclass
class Worker:
    """One identity's way to the service: jpeg, meta and blank requests, and its uid."""

    request: Request
    pid: str
    esaf: int
    uid: int
    clients: ThreadClients
    master: Path

    @classmethod
    def new(cls, bench: running, master: Path, user: str, esafs: list[int]) -> Worker:
        """A session of ``user`` (its worker starts with its first request)."""
        pid = bench.service.session(user, esafs)
        esaf = esafs[0] if esafs else 0
        request = requester(bench.clients, pid, master, esaf)
        return cls(request, pid, esaf, pwd.getpwnam(user).pw_uid, bench.clients, master)

    def meta(self) -> float:
        started = time.perf_counter()
        job = {"type": "meta", "pid": self.pid, "esaf": self.esaf, "fn": str(self.master)}
        check(self.clients.request(job))
        return time.perf_counter() - started

    def blank(self) -> float:
        """An 8 px blank (no file): starts the worker without touching a frame."""
        started = time.perf_counter()
        self.clients.request({"type": "jpeg", "pid": self.pid, "esaf": self.esaf, "xsize": 8})
        return time.perf_counter() - started


class FreshFrames:
    """Frames the steady worker has not read; after the last, again at a width not yet seen.

    Its memory holds ~5 frames, so a frame read 48 frames ago is gone, but its 1024 views
    are still in memory and Redis: a new width makes a new view, hence a decode.
    """

    def __init__(self) -> None:
        self._taken = 0
        self._by_key: dict[object, tuple[int, int]] = {}

    def take(self) -> tuple[int, int]:
        """(frame, how many px narrower than asked to make the view)."""
        self._taken += 1
        return 1 + (self._taken - 1) % N_FRAMES, (self._taken - 1) // N_FRAMES

    def shared(self, key: object) -> tuple[int, int]:
        """One frame for all the samples that name ``key``."""
        if key not in self._by_key:
            self._by_key[key] = self.take()
        return self._by_key[key]


@dataclass
class Context:
    """What the samples share: frames, the crowd of clients, who makes views for Redis."""

    frames: FreshFrames = field(default_factory=FreshFrames)
    crowd: Crowd = field(default_factory=Crowd)
    maker: Worker | None = None
    views: SharedViews | None = None
    shared_views_made: int = 0


Sample = Callable[[Context, Worker, Samples, int], None]
"""Prepares sample ``index`` on a worker (untimed), then measures the action into Samples."""


def sample_cold(ctx: Context, worker: Worker, samples: Samples, _index: int) -> None:
    frame, narrower = ctx.frames.take()
    samples.measure(lambda: worker.request(frame, xsize=1024 - narrower))
    other, _ = ctx.frames.take()
    view = ViewSpec(worker.master, frame=other, xsize=1024 - narrower)
    samples.paired.append(_time(lambda: render_file(view, Look())))


def sample_contrast(ctx: Context, worker: Worker, samples: Samples, index: int) -> None:
    frame, narrower = ctx.frames.shared("contrast")
    worker.request(frame, xsize=1024 - narrower)  # the view made (then held)
    samples.measure(lambda: worker.request(frame, xsize=1024 - narrower, contrast=30 + index))


def sample_repeat(ctx: Context, worker: Worker, samples: Samples, _index: int) -> None:
    frame, narrower = ctx.frames.shared("contrast")
    again = {"xsize": 1024 - narrower, "contrast": 500, "wval": 2}
    worker.request(frame, **again)
    samples.measure(lambda: worker.request(frame, **again))


def sample_tile(ctx: Context, worker: Worker, samples: Samples, index: int) -> None:
    frame, narrower = ctx.frames.shared(("tile", index // 16))
    worker.request(frame, xsize=1024 - narrower)  # viewed whole first, as a user does
    col, row = index % 4, (index // 4) % 4
    samples.measure(
        lambda: worker.request(frame, xsize=1024 - narrower, zoom=4, segcol=col, segrow=row)
    )


def sample_shared(ctx: Context, reader: Worker, samples: Samples, _index: int) -> None:
    """A view the steady worker made and stored in Redis, asked for by ``reader``."""
    assert ctx.maker is not None and ctx.views is not None
    frame, _ = ctx.frames.shared("shared")
    ctx.shared_views_made += 1
    xsize = 1000 - ctx.shared_views_made  # a view nobody asked for yet
    stored = ctx.views.count()
    ctx.maker.request(frame, xsize=xsize)
    ctx.views.wait_beyond(stored)
    samples.measure(lambda: reader.request(frame, xsize=xsize, contrast=40))


def sample_mosaic(ctx: Context, worker: Worker, samples: Samples, _index: int) -> None:
    frame, narrower = ctx.frames.take()
    samples.measure(lambda: all_tiles(ctx.crowd, worker.request, frame, 256 - narrower))


def sample_three(ctx: Context, worker: Worker, samples: Samples, _index: int) -> None:
    batch = [ctx.frames.take() for _ in range(3)]
    calls: list[Callable[[], object]] = [
        lambda f=f, n=n: worker.request(f, xsize=1024 - n) for f, n in batch
    ]
    samples.measure(lambda: ctx.crowd.wall(calls))


def sample_meta(_ctx: Context, worker: Worker, samples: Samples, _index: int) -> None:
    samples.measure(worker.meta)


def sample_first(_ctx: Context, worker: Worker, samples: Samples, _index: int) -> None:
    samples.measure(worker.blank)


@dataclass
class Action:
    """One row: what the user does, as a sample on a worker, and its goal."""

    name: str
    target: Target
    sample: Sample | None = None
    is_reader: bool = False
    """Timed on a second worker of the ESAF; the steady worker made the view."""
    is_steady: bool = True
    """Also timed on the steady worker (not a worker's first request)."""
    new_worker_has: str = "series"
    """What a new worker did before its sample: "nothing" (not forked yet), "started" (an
    8 px blank), or "series" (then a meta request too: a worker's first request of a series
    reads its layout and pixel mask, which the "first meta" row times on its own)."""
    is_wall: bool = False
    """A sample is a batch of requests at once: half the samples."""
    in_process: list[float] = field(default_factory=list)
    new_worker: Samples | None = None
    steady: Samples | None = None

    def n_samples(self, runs: int) -> int:
        return max(3, runs // 2) if self.is_wall else runs


def user_actions() -> dict[str, Action]:
    return {
        "cold": Action(
            "cold 16M frame → 1024 JPEG (never requested)",
            Target(
                f"≤1.2× in-proc, ≤{LEGACY_10X_MS:.0f} (10× legacy); sys ≤25 %",
                ms=LEGACY_10X_MS,
                per_core_cold=1.2,
                system_share=0.25,
            ),
            sample_cold,
        ),
        "contrast": Action(
            "same frame, new contrast (view in worker memory)", Target("≤ 5", 5), sample_contrast
        ),
        "repeat": Action("exact repeat", Target("≤ 2", 2), sample_repeat),
        "tile": Action(
            "×4 zoom tile, 1024 wide, of a viewed frame", Target("≤ 10", 10), sample_tile
        ),
        "shared": Action(
            "view made by another worker of the ESAF (Redis)",
            Target("≤ 8", 8),
            sample_shared,
            is_reader=True,
        ),
        "mosaic": Action(
            "16 tiles ×4, 256 wide, of a new frame at once (wall)",
            Target("≤ 1.5× cold", per_cold=1.5),
            sample_mosaic,
            is_wall=True,
        ),
        "three": Action(
            "3 different cold frames at once (wall)",
            Target("≤ 2.2× cold", per_cold=2.2),
            sample_three,
            is_wall=True,
        ),
        "meta": Action("meta round trip", Target("≤ 1", 1), sample_meta),
        "first": Action(
            "first request of a new identity (fork; 8 px blank)",
            Target("≤ 100", 100),
            sample_first,
            is_steady=False,
            new_worker_has="nothing",
        ),
        "series": Action(
            "first meta of a series in a new worker (opens it)",
            Target(""),
            sample_meta,
            is_steady=False,
            new_worker_has="started",
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("sample-data-chain"))
    parser.add_argument("--runs", type=int, default=12, help="samples per row and column")
    parser.add_argument("--distinct", type=int, default=1000, help="requests of the RSS row")
    args = parser.parse_args()
    tune_allocator()
    warm_up()
    master = write_series_once(args.data.resolve())
    work = Path(tempfile.mkdtemp(prefix="imageserver-bench-", dir="/tmp"))
    work.chmod(0o755)
    redis_server = EmbeddedRedis(work / "redis").start()
    users = BenchUsers()
    budget = BUDGET_MIB << 20
    actions = user_actions()
    ctx = Context()
    try:
        esafs = users.make_esaf_group()
        bench_in_process(actions, master, redis_server, args.runs)
        with running(work / "service", redis_server, f"memory_budget_bytes = {budget}\n") as bench:
            if esafs:
                ctx.views = SharedViews(redis_server)
            bench_steady(actions, ctx, bench, master, users, esafs, args.runs)
            if users.is_root:
                bench_new_workers(actions, ctx, bench, master, users, esafs, args.runs)
            name, times, target = bench_memory_bound(bench, master, users, args.distinct, budget)
            ctx.crowd.close()
    finally:
        users.remove()
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    rss = Action(name, Target(target), steady=Samples(list, seconds=times, is_metered=False))
    print_table([*actions.values(), rss], args.runs)
    return 0


def bench_in_process(
    actions: dict[str, Action], master: Path, redis_server: EmbeddedRedis, runs: int
) -> None:
    """The same work in this process, through the worker's own renderer where it caches.

    Two renderers share a Redis database of their own (2) as two workers of an ESAF do.
    Batches run on as many threads as a worker has.
    """
    settings = CacheSettings(memory_budget_bytes=BUDGET_MIB << 20)
    url = redis_server.url.rsplit("/", 1)[0] + "/2"
    where = {"gid": os.getgid(), "home": os.getcwd(), "cache": {"url": url}}
    maker, reader = renderer_for_worker(where, settings), renderer_for_worker(where, settings)
    crowd = Crowd(WorkerSettings().threads)
    fn = str(master)
    frames = FreshFrames()
    meta_payload = json.dumps({"type": "meta", "pid": "p", "fn": fn, "frame": 1}).encode()

    def spec(
        frame: int, xsize: int = 1024, zoom: float = 1, segcol: int = 0, segrow: int = 0
    ) -> ViewSpec:
        return ViewSpec(master, frame=frame, xsize=xsize, zoom=zoom, segcol=segcol, segrow=segrow)

    def jpeg(renderer: CachedRenderer, view: ViewSpec, look: Look | None = None) -> None:
        renderer.jpeg(view, look or Look(), fn=fn)

    for _ in range(2):  # the heap grown, as the steady worker's
        render_file(spec(frames.take()[0]), Look())
    held = frames.take()[0]
    jpeg(maker, spec(held))
    found = {
        "cold": [_time(lambda: render_file(spec(frames.take()[0]), Look())) for _ in range(runs)],
        "contrast": [_time(lambda i=i: jpeg(maker, spec(held), Look(30 + i))) for i in range(runs)],
        "repeat": [_time(lambda: jpeg(maker, spec(held), Look(500, 2))) for _ in range(runs)],
        "tile": [
            _time(lambda i=i: jpeg(maker, spec(held, zoom=4, segcol=i % 4, segrow=i // 4 % 4)))
            for i in range(min(runs, 16))
        ],
        "shared": [],
        "mosaic": [],
        "three": [],
        "meta": [_time(lambda: jobs.handle(meta_payload)) for _ in range(runs)],
    }
    writer = maker.views.shared.writer if maker.views.shared else None
    for i in range(runs):
        jpeg(maker, spec(held, xsize=999 - i))
        if writer is not None:
            writer.flush()
        found["shared"].append(_time(lambda i=i: jpeg(reader, spec(held, xsize=999 - i), Look(40))))
    for _ in range(actions["mosaic"].n_samples(runs)):
        frame = frames.take()[0]
        tiles = [
            spec(frame, xsize=256, zoom=4, segcol=c, segrow=r) for r in range(4) for c in range(4)
        ]
        found["mosaic"].append(crowd.wall([lambda t=t: jpeg(maker, t) for t in tiles]))
    for _ in range(actions["three"].n_samples(runs)):
        batch = [spec(frames.take()[0]) for _ in range(3)]
        found["three"].append(crowd.wall([lambda s=s: render_file(s, Look()) for s in batch]))
    crowd.close()
    for key, seconds in found.items():
        actions[key].in_process = seconds


def bench_steady(
    actions: dict[str, Action],
    ctx: Context,
    bench: running,
    master: Path,
    users: BenchUsers,
    esafs: list[int],
    runs: int,
) -> None:
    """Every action on one long-running worker (and a second one of the ESAF for Redis)."""
    steady = Worker.new(bench, master, users.make(), esafs)
    warm_heap(steady.request, [ctx.frames.take()[0] for _ in range(heap_frames(bench.service))])
    ctx.maker = steady
    for action in actions.values():
        if action.is_steady and not action.is_reader and action.sample is not None:
            action.steady = _samples(action, ctx, bench, lambda: steady, runs)
    if not esafs:
        return
    reader = Worker.new(bench, master, users.make(), esafs)
    # Frames the steady worker read at 1024 only: new 64 px views, so the reader decodes.
    warm_heap(reader.request, list(range(N_FRAMES, N_FRAMES - heap_frames(bench.service), -1)))
    if ctx.views is not None:
        ctx.views.settle()  # its own views written behind, before the samples count views
    for action in actions.values():
        if action.is_steady and action.is_reader and action.sample is not None:
            action.steady = _samples(action, ctx, bench, lambda: reader, runs)


def bench_new_workers(
    actions: dict[str, Action],
    ctx: Context,
    bench: running,
    master: Path,
    users: BenchUsers,
    esafs: list[int],
    runs: int,
) -> None:
    """Every action, each sample on a worker forked for it: a new user, stopped afterwards.

    The users are in no ESAF (each its own group, so nothing of theirs is in Redis), except
    the readers of a view the steady worker stored, who are in its ESAF.
    """
    for action in actions.values():
        if action.sample is None:
            continue
        started: list[Worker] = []

        def new_worker(action: Action = action, started: list[Worker] = started) -> Worker:
            worker = Worker.new(bench, master, users.make(), esafs if action.is_reader else [])
            if action.new_worker_has in ("started", "series"):
                worker.blank()
            if action.new_worker_has == "series":
                worker.meta()
            started.append(worker)
            return worker

        def stop(started: list[Worker] = started) -> None:
            stop_worker(worker_of(bench.service, started.pop().uid))

        action.new_worker = _samples(action, ctx, bench, new_worker, runs, after=stop)


def _samples(
    action: Action,
    ctx: Context,
    bench: running,
    worker: Callable[[], Worker],
    runs: int,
    after: Callable[[], None] = lambda: None,
) -> Samples:
    assert action.sample is not None
    samples = Samples(bench.serving_pids)
    for index in range(action.n_samples(runs)):
        action.sample(ctx, worker(), samples, index)
        after()
    return samples


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def print_table(actions: list[Action], runs: int) -> None:
    """One row per action: medians and p95 in ms, whether the target is met, system share."""
    cold = actions[0]
    core_cold = statistics.median(cold.in_process) if cold.in_process else 0.0

    def met(action: Action, samples: Samples | None, cold: Samples | None) -> str:
        if samples is None or not samples.seconds or not action.target.is_checkable:
            return "–"
        cold_s = statistics.median(cold.seconds) if cold and cold.seconds else 0.0
        return "✓" if action.target.is_met(samples, core_cold, cold_s) else "✗"

    print(machine_line())
    print(
        f"--runs {runs}; ms; new = a worker forked for each sample, steady = one warmed worker;"
        " sys % = system / (user + system) CPU of proxy, manager, zygote and workers over the"
        " column's samples (/proc/PID/stat), with that CPU in s"
    )
    print()
    head = (
        f"| {'what':<62} | {'in-proc':>7} | {'new med':>7} | {'new p95':>7} | {'steady':>7} "
        f"| {'st. p95':>7} | {'target ms':<42} | {'met n/s':<7} | {'sys % new':>12} "
        f"| {'sys % steady':>12} |"
    )
    print(head)
    print("|" + "|".join("-" * len(cell) for cell in head.split("|")[1:-1]) + "|")
    for action in actions:
        new, steady = action.new_worker, action.steady
        new_s = new.seconds if new else []
        steady_s = steady.seconds if steady else []
        verdict = f"{met(action, new, cold.new_worker)} {met(action, steady, cold.steady)}"
        print(
            f"| {action.name:<62} | {ms_quantile(action.in_process, 0.5):>7} "
            f"| {ms_quantile(new_s, 0.5):>7} | {ms_quantile(new_s, 0.95):>7} "
            f"| {ms_quantile(steady_s, 0.5):>7} | {ms_quantile(steady_s, 0.95):>7} "
            f"| {action.target.text:<42} | {verdict:<7} "
            f"| {_share(new):>12} | {_share(steady):>12} |"
        )
        if action is cold:
            print(_paired_row(new, steady))


def _paired_row(new: Samples | None, steady: Samples | None) -> str:
    """Chain ÷ in-process of the cold row, each chain sample over the in-process one right
    after it (median of the ratios), against the 1.2× target."""

    def ratio(samples: Samples | None) -> str:
        if samples is None or not samples.paired:
            return ""
        pairs = zip(samples.seconds, samples.paired, strict=True)
        return f"{statistics.median(chain / alone for chain, alone in pairs):.2f}×"

    new_r, steady_r = ratio(new), ratio(steady)
    verdict = " ".join(
        "–" if not text else ("✓" if float(text[:-1]) <= 1.2 else "✗") for text in (new_r, steady_r)
    )
    name = "cold frame, chain ÷ in-process, each sample paired"
    return (
        f"| {name:<62} | {'':>7} | {new_r:>7} | {'':>7} | {steady_r:>7} | {'':>7} "
        f"| {'≤ 1.2×':<42} | {verdict:<7} | {'':>12} | {'':>12} |"
    )


def _share(samples: Samples | None) -> str:
    if samples is None or not samples.is_metered:
        return ""
    if samples.system_share is None:
        return "– (0.00 s)"  # not one clock tick
    return f"{samples.system_share * 100:.0f} ({samples.cpu_s:.2f} s)"


if __name__ == "__main__":
    sys.exit(main())
