"""Live data through the chain: a simulated detector writes frames at 10 Hz (a thread of its
own) while a follower polls ``latest`` as the viewer does (every 500 ms); each frame's first
view is asked 150 ms after its write (the ready target). With the watch, and without it
(the reference), in the same run, each through broker → manager → the user's worker, as root
with a real user and ESAF group (as the invoking user otherwise) and a real Redis.

    .venv/bin/python benchmarks/live_chain_bench.py [--frames 30]

`benchmarks/live_bench.py` measures write → ready inside one process; this one measures what
a user meets: the first request of a new frame, end to end.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chain_common import BENCH_GROUP, BenchUsers, ms_quantile
from imageserver.client import Client
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService
from imageserver.sampledata.cbf import write_pilatus_cbf
from imageserver.sampledata.eiger import LiveEigerWriter
from imageserver.sampledata.pattern import centred_geometry

PERIOD_S = 0.1
ASK_AFTER_S = 0.15
FOLLOW_PERIOD_S = 0.5
XSIZE = 1024


def detector(directory: Path, kind: str) -> Callable[[int], tuple[str, int]]:
    """Writes frame ``index``; returns the (file, frame) a viewer would ask for."""
    if kind == "cbf":
        data = write_pilatus_cbf(Path(tempfile.mkdtemp()) / "template.cbf").read_bytes()

        def write_cbf(index: int) -> tuple[str, int]:
            path = directory / f"run_{index:05d}.cbf"
            path.write_bytes(data)
            return str(path), 1

        return write_cbf
    writer = LiveEigerWriter(
        directory, "live_001", geometry=centred_geometry(4148, 4362, 75e-6), planned_frames=1000
    )
    return lambda _index: (str(writer.master), writer.write_frame())


def follow(service: LocalService, pid: str, esaf: int, directory: Path, stop: threading.Event):
    """The viewer's follow mode: ``latest`` every 500 ms."""
    with Client(service.front, context=service.context) as client:
        while not stop.is_set():
            client.request({"type": "latest", "pid": pid, "esaf": esaf, "dir": str(directory)})
            stop.wait(FOLLOW_PERIOD_S)


def run(
    service: LocalService, pid: str, esaf: int, directory: Path, kind: str, n_frames: int
) -> list[float]:
    """The detector free-running at 10 Hz on a thread of its own; each frame asked for 150 ms
    after its write (later when the previous answer took longer)."""
    write = detector(directory, kind)
    written: queue.Queue[tuple[str, int, float]] = queue.Queue()
    stop = threading.Event()

    def run_detector() -> None:
        next_at = time.monotonic()
        for index in range(1, n_frames + 1):
            fn, frame = write(index)
            written.put((fn, frame, time.monotonic()))
            next_at += PERIOD_S
            time.sleep(max(0.0, next_at - time.monotonic()))

    follower = threading.Thread(target=follow, args=(service, pid, esaf, directory, stop))
    follower.start()
    seconds: list[float] = []
    try:
        with Client(service.front, context=service.context) as client:
            time.sleep(1.0)  # the follower's first latest: the directory is watched
            writer = threading.Thread(target=run_detector)
            writer.start()
            for _ in range(n_frames):
                fn, frame, written_at = written.get(timeout=60)
                time.sleep(max(0.0, written_at + ASK_AFTER_S - time.monotonic()))
                request = {"type": "jpeg", "pid": pid, "esaf": esaf, "fn": fn, "frame": frame}
                asked = time.perf_counter()
                reply = client.request({**request, "xsize": XSIZE})
                seconds.append(time.perf_counter() - asked)
                if reply.error is not None:
                    raise RuntimeError(f"{fn} frame {frame}: {reply.error}")
            writer.join()
    finally:
        stop.set()
        follower.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30)
    args = parser.parse_args()
    users = BenchUsers()
    rows = []
    try:
        login = users.make()
        esafs = users.make_esaf_group()
        esaf = esafs[0] if esafs else 0
        redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="live-chain-redis-"))).start()
        try:
            for is_live in (True, False):
                top = Path(tempfile.mkdtemp(prefix="live-chain-"))
                top.chmod(0o755)
                live = f"[live]\nwatch = {str(is_live).lower()}\n"
                live += f"reduce_new_frames = {str(is_live).lower()}\n"
                identity = '[identity]\nesaf_group_pattern = "isbenchesaf{esaf}"\n'
                metrics = '[metrics]\nbroker = ""\nmanager = ""\n'
                service = LocalService(
                    top / "service", redis.url, extra_config=identity + live + metrics
                )
                service.start()
                try:
                    pid = service.session(login, esafs)
                    for kind, label in (("cbf", "Pilatus 6M CBF"), ("eiger", "Eiger2 16M")):
                        data = top / kind
                        data.mkdir()
                        if users.is_root:
                            shutil.chown(data, group=BENCH_GROUP)
                        data.chmod(0o2750)  # frames inherit the ESAF group, as on a beamline
                        seconds = run(service, pid, esaf, data, kind, args.frames)
                        mode = "watch" if is_live else "no watch (reference)"
                        rows.append((f"{label}: first view, 150 ms after write", mode, seconds))
                finally:
                    service.stop()
                    shutil.rmtree(top, ignore_errors=True)
        finally:
            redis.stop()
    finally:
        users.remove()
    print(f"{'what':44} {'mode':22} {'n':>4} {'median ms':>10} {'p95 ms':>8} {'target':>7}")
    for what, mode, seconds in rows:
        print(
            f"{what:44} {mode:22} {len(seconds):>4} {ms_quantile(seconds, 0.5):>10} "
            f"{ms_quantile(seconds, 0.95):>8} {'≤ 10':>7}"
        )


if __name__ == "__main__":
    os.umask(0o022)
    main()
