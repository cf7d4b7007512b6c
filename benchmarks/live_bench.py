"""Live data: a simulated detector writes frames at 10 Hz; how soon is each one ready, and
what does the first request for it cost, with the watch and without (the reference).

Run: ``python benchmarks/live_bench.py [--frames 20]`` (``scripts/bench --live``). In this
process, with the worker's own parts (a real inotify watch, `LiveData`, a `CachedRenderer`
with a memory tier, `Jobs` answering the wire JSON): full-size Pilatus 6M CBFs closed in a
directory, and 16M Eiger frames appended to a data file in SWMR mode. Each frame's first
request is sent 150 ms after it was written (the ready target), as a follower's poll would.
Not yet measured through the chain's processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imageserver.allocator import tune_allocator
from imageserver.cache.keys import Scope
from imageserver.cache.memory import MemoryCache
from imageserver.cache.renderer import CachedRenderer, entry_nbytes
from imageserver.config import LimitSettings, LiveSettings
from imageserver.sampledata.cbf import write_pilatus_cbf
from imageserver.sampledata.eiger import LiveEigerWriter
from imageserver.sampledata.pattern import centred_geometry
from imageserver.service.background import LIVE
from imageserver.service.jobs import Jobs
from imageserver.service.live import LiveData, Prepared

PERIOD_S = 0.1
ASK_AFTER_S = 0.15


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_detector(
    directory: Path, kind: str, n_frames: int, is_live: bool
) -> tuple[list[float], list[float], int]:
    """(write → ready ms, first request ms, frames skipped by coalescing)."""
    prepared: list[Prepared] = []
    settings = LiveSettings(prefetch=False, watch=is_live, reduce_new_frames=is_live)
    scope = Scope.for_worker(0, str(directory))
    renderer = CachedRenderer(scope, MemoryCache(1 << 30, entry_nbytes), limits=LimitSettings())
    live = LiveData(settings, renderer, on_ready=prepared.append)
    jobs = Jobs(renderer=renderer, live=live)
    written: dict[tuple[str, int], int] = {}
    asks: list[float] = []
    try:
        write, _ = _detector(directory, kind)
        jobs(json.dumps({"type": "latest", "pid": "p", "dir": str(directory)}).encode())
        for index in range(1, n_frames + 1):
            started = time.monotonic()
            key = write(index)
            written[key] = time.monotonic_ns()
            time.sleep(max(0.0, ASK_AFTER_S - (time.monotonic() - started)))
            fn, frame = key
            request = {"type": "jpeg", "pid": "p", "fn": fn, "frame": frame, "xsize": 1024}
            asked = time.perf_counter()
            jobs(json.dumps(request).encode())
            asks.append((time.perf_counter() - asked) * 1e3)
            time.sleep(max(0.0, PERIOD_S - (time.monotonic() - started) % PERIOD_S))
        live.queue.wait_idle(10)
    finally:
        live.close()
    ready = [
        (p.ready_ns - written[(p.fn, p.frame)]) / 1e6
        for p in prepared
        if p.kind == LIVE and p.source == "file" and (p.fn, p.frame) in written
    ]
    return ready, asks, n_frames - len(ready) if is_live else 0


def _detector(directory: Path, kind: str) -> tuple[Callable[[int], tuple[str, int]], None]:
    if kind == "cbf":
        data = write_pilatus_cbf(directory / "template.cbf.tmp").read_bytes()

        def write_cbf(index: int) -> tuple[str, int]:
            path = directory / f"run_{index:05d}.cbf"
            with open(path, "wb") as stream:
                stream.write(data)
            return str(path), 1

        return write_cbf, None
    writer = LiveEigerWriter(
        directory, "live_001", geometry=centred_geometry(4148, 4362, 75e-6), planned_frames=1000
    )

    def write_eiger(index: int) -> tuple[str, int]:
        return str(writer.master), writer.write_frame()

    return write_eiger, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args()
    tune_allocator()
    rows = []
    for kind, label in (("cbf", "Pilatus 6M CBF"), ("eiger", "Eiger2 16M appended (SWMR)")):
        for is_live in (True, False):
            with tempfile.TemporaryDirectory(prefix="live-bench-") as tmp:
                ready, asks, skipped = run_detector(Path(tmp), kind, args.frames, is_live)
            mode = "watch" if is_live else "no watch (reference)"
            if ready:
                rows.append((f"{label}: write → ready in cache", mode, ready, "≤ 150", skipped))
            rows.append((f"{label}: first request, 150 ms after write", mode, asks, "≤ 10", 0))
    print(f"{'what':62} {'mode':22} {'n':>4} {'med ms':>8} {'p95 ms':>8} {'target':>8} skipped")
    for what, mode, values, target, skipped in rows:
        print(
            f"{what:62} {mode:22} {len(values):>4} {statistics.median(values):>8.1f} "
            f"{quantile(values, 0.95):>8.1f} {target:>8} {skipped:>7}"
        )


if __name__ == "__main__":
    main()
