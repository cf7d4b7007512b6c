"""Spot finding and per-image analysis: median and p95 per frame, beside DIALS's find_spots.

Rows: the analysis of a decoded Eiger2 16M frame (the synthetic series the chain benchmarks
write) and of the real Pilatus 6M frame, as `analysis.analyse` runs them (frame already in
memory), and the same frames through dials.find_spots (import, find, per-image counts: one
process per run, as beamline scripts call it) where DIALS is installed.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from chain_common import write_series_once
from imageserver.analysis import analyse
from imageserver.formats import open_source
from imageserver.formats.base import AnyFrame, EncodedFrame

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PILATUS = SHARED_DATA / "pilatus6m_thau_3_2_0001.cbf.bz2"


def timings_ms(work: Callable[[], object], runs: int) -> list[float]:
    work()  # warm: compiled kernels loaded, pool threads started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return times


def dials_find_spots_s(image: Path) -> float | None:
    """Wall time of dials.import + dials.find_spots on one image (None without DIALS)."""
    if shutil.which("dials.find_spots") is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONNOUSERSITE": "1"}
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["dials.import", str(image)], cwd=work, env=env, check=True,
                       capture_output=True)  # fmt: skip
        started = time.perf_counter()
        subprocess.run(["dials.find_spots", "imported.expt"], cwd=work, env=env, check=True,
                       capture_output=True)  # fmt: skip
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--series", type=Path, default=Path("sample-data-chain"))
    parser.add_argument("--no-dials", action="store_true", help="skip the DIALS rows")
    args = parser.parse_args()
    master = write_series_once(args.series.resolve())
    eiger = open_source(master, 1)
    decoded = eiger.decode() if isinstance(eiger, EncodedFrame) else eiger
    frames: list[tuple[str, AnyFrame, Path | None]] = [
        ("Eiger2 16M (synthetic, decoded)", decoded, None)
    ]
    if PILATUS.exists():
        frames.append(("Pilatus 6M thaumatin (real)", open_source(PILATUS, 1), PILATUS))
    print(f"{'frame':36} {'spots':>6} {'p50 ms':>8} {'p95 ms':>8}  DIALS find_spots")
    for name, frame, path in frames:
        result = analyse(frame)
        times = sorted(timings_ms(functools.partial(analyse, frame), args.runs))
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        dials = None if args.no_dials or path is None else dials_find_spots_s(path)
        dials_text = "—" if dials is None else f"{dials:.2f} s (whole command)"
        print(
            f"{name:36} {result.stats.n_spots_total:6d} {statistics.median(times):8.1f}"
            f" {p95:8.1f}  {dials_text}"
        )
    print(f"{os.cpu_count()} cores, {args.runs} runs each", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
