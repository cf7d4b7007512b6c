"""Benchmarks of the imaging core against a plain reference, printed as one table.

Run: ``python benchmarks/run.py`` (or ``scripts/bench``). It writes the sample data it needs
into ``--data`` (default ``sample-data/``) if absent, then times, with the files in the page
cache:

- one Eiger2 X 16M frame → 1024-wide JPEG, per stage and total, each run on a frame not read
  before in that process (no frame cache exists), file handles warm;
- the same done the plain way (h5py + hdf5plugin read, NumPy reduction, Pillow JPEG);
- the bz2 Pilatus frame from ../shared/data against bare bz2 decompression of that file;
- first-call latency of a new process (numba disk cache warm).
"""

from __future__ import annotations

import argparse
import bz2
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import hdf5plugin
import numba
import numpy as np
import simplejpeg
from PIL import Image

from imageserver.allocator import tune_allocator
from imageserver.formats import open_frame
from imageserver.imaging.colormaps import get_colormap
from imageserver.imaging.contrast import choose_levels, map_contrast_planes
from imageserver.imaging.encode import encode_jpeg_ycc
from imageserver.imaging.reduce import reduce_frame, warm_up
from imageserver.imaging.reference import reduce_frame_reference
from imageserver.imaging.stats import view_stats
from imageserver.render import Look, ViewSpec, plan_frame_view, reduce_view, render_jpeg
from imageserver.sampledata.dataset import EIGER16M_MASTER, write_sample_data

SHARED_BZ2 = Path(__file__).resolve().parents[2] / "shared/data/pilatus6m_thau_3_2_0001.cbf.bz2"
Row = tuple[str, list[float], str]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("sample-data"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--frames", type=int, default=4, help="frames in the sample series")
    args = parser.parse_args()
    tune_allocator()
    warm_up()
    master = args.data / EIGER16M_MASTER
    if not master.exists():
        print(f"writing sample data to {args.data} ...", file=sys.stderr)
        write_sample_data(args.data, n_frames=args.frames)
    rows: list[Row] = []
    rows += bench_eiger(master, args.runs)
    rows += bench_bz2(args.runs)
    rows += bench_first_call(master)
    print_table(rows)
    return 0


def bench_eiger(master: Path, runs: int) -> list[Row]:
    spec = ViewSpec(path=master, xsize=1024)
    look = Look()
    n_frames = open_frame(master, 1).meta.last_frame
    decode, reduce_t, stats_t, contrast_t, encode_t, encode_444, total = ([] for _ in range(7))
    keep = get_colormap("grey").overload_chroma
    for run in range(runs):
        number = 1 + run % n_frames
        t0 = time.perf_counter()
        frame = open_frame(master, number)
        t1 = time.perf_counter()
        view = plan_frame_view(frame, spec)
        reduced = reduce_frame(frame, view)
        t2 = time.perf_counter()
        stats = view_stats(reduced, frame.meta.beam_center_x_px, frame.meta.beam_center_y_px)
        t3 = time.perf_counter()
        levels = choose_levels(stats, look.contrast, look.wval)
        planes = map_contrast_planes(reduced, levels, "grey")
        t4 = time.perf_counter()
        encode_jpeg_ycc(planes, look.quality, subsampling=look.chroma, keep_chroma=keep)
        t5 = time.perf_counter()
        encode_jpeg_ycc(planes, look.quality, subsampling="444")
        encode_444.append(time.perf_counter() - t5)
        decode.append(t1 - t0)
        reduce_t.append(t2 - t1)
        stats_t.append(t3 - t2)
        contrast_t.append(t4 - t3)
        encode_t.append(t5 - t4)
        del frame
        t6 = time.perf_counter()
        render_jpeg(reduce_view(open_frame(master, number), spec), look)
        total.append(time.perf_counter() - t6)
    plain = [_time(lambda n=1 + r % n_frames: plain_render(master, n, 1024)) for r in range(runs)]
    ratio = statistics.median(plain) / statistics.median(total)
    return [
        ("16M decode (bitshuffle-LZ4 direct chunk)", decode, "≤ 18"),
        ("16M reduce 4148×4362 → 1024 (numba)", reduce_t, ""),
        ("16M view statistics + spots", stats_t, ""),
        ("16M contrast → YCbCr planes", contrast_t, ""),
        ("16M reduce + contrast", _sum(reduce_t, contrast_t), "≤ 6"),
        ("16M JPEG encode q90 4:2:0, overloads kept (simplejpeg)", encode_t, "≤ 3"),
        ("16M JPEG encode q90 4:4:4 (the exact option)", encode_444, ""),
        ("16M total frame → JPEG (ours)", total, "≤ 30"),
        (f"16M plain h5py + NumPy + Pillow ({ratio:.1f}× slower)", plain, "≥ 3× ours"),
    ]


def plain_render(master: Path, number: int, width_px: int) -> bytes:
    """The straightforward way: h5py read through the filter, NumPy reduction, Pillow JPEG."""
    with h5py.File(master, "r") as f:
        data = None
        for name in sorted(f["/entry/data"]):
            dataset = f["/entry/data"][name]
            low, high = int(dataset.attrs["image_nr_low"]), int(dataset.attrs["image_nr_high"])
            if low <= number <= high:
                data = dataset[number - low]
                break
        mask = f["/entry/instrument/detector/detectorSpecific/pixel_mask"][()]
    assert data is not None and hdf5plugin is not None
    frame = _frame_like(master, number, data, mask)
    view = plan_frame_view(frame, ViewSpec(path=master, xsize=width_px))
    reduced = reduce_frame_reference(frame, view)
    stats = view_stats(reduced, frame.meta.beam_center_x_px, frame.meta.beam_center_y_px)
    levels = choose_levels(stats, 0, 0)
    scaled = (reduced.values.astype(np.float64) - levels.white) / (levels.black - levels.white)
    grey = (255 - np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _frame_like(master: Path, number: int, data: np.ndarray, mask: np.ndarray):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from imageserver.formats.base import Frame

    template = open_frame(master, number)
    return Frame(
        pixels=np.ascontiguousarray(data),
        mask=(mask != 0).astype(np.uint8),
        meta=replace(template.meta),
        number=number,
        path=master,
    )


def bench_bz2(runs: int) -> list[Row]:
    if not SHARED_BZ2.exists():
        return [("bz2 Pilatus 6M (shared data absent)", [float("nan")], "")]
    raw = SHARED_BZ2.read_bytes()
    bare = [_time(lambda: bz2.decompress(raw)) for _ in range(max(5, runs // 4))]
    spec = ViewSpec(path=SHARED_BZ2, xsize=1024)
    ours = [
        _time(lambda: render_jpeg(reduce_view(open_frame(SHARED_BZ2, 1), spec), Look()))
        for _ in range(max(5, runs // 4))
    ]
    ratio = statistics.median(ours) / statistics.median(bare)
    return [
        ("Pilatus 6M .cbf.bz2: bare bz2.decompress", bare, ""),
        (f"Pilatus 6M .cbf.bz2 → JPEG total ({ratio:.2f}× bare bz2)", ours, "≤ 1.2× bz2"),
    ]


def bench_first_call(master: Path) -> list[Row]:
    """A new process: import, warm the kernels from the disk cache, render one frame."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from pathlib import Path\n"
        "from imageserver.allocator import tune_allocator; tune_allocator()\n"
        "from imageserver.imaging.reduce import warm_up\n"
        "from imageserver.render import Look, ViewSpec, render_file\n"
        "warm_up(); t1 = time.perf_counter()\n"
        f"render_file(ViewSpec(path=Path({str(master)!r}), xsize=1024), Look())\n"
        "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)\n"
    )
    imports, first = [], []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        a, b = (float(x) for x in out.stdout.split())
        imports.append(a)
        first.append(b)
    return [
        ("new process: import + kernel warm-up (disk cache)", imports, ""),
        ("new process: first 16M frame → JPEG after warm-up", first, ""),
    ]


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sum(*series: list[float]) -> list[float]:
    return [sum(values) for values in zip(*series, strict=True)]


def machine_line() -> str:
    """The machine and versions a table was measured with (numbers drift with both)."""
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
        f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), "
        f"simplejpeg {simplejpeg.__version__}"
    )


def print_table(rows: list[Row]) -> None:
    print(machine_line())
    print()
    print(f"| {'what':<58} | {'runs':>4} | {'median ms':>9} | {'p95 ms':>7} | {'target ms':<10} |")
    print(f"|{'-' * 60}|{'-' * 6}|{'-' * 11}|{'-' * 9}|{'-' * 12}|")
    for name, seconds, target in rows:
        ms = sorted(s * 1000 for s in seconds)
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        print(
            f"| {name:<58} | {len(ms):>4} | {statistics.median(ms):>9.1f} | {p95:>7.1f} "
            f"| {target:<10} |"
        )


if __name__ == "__main__":
    sys.exit(main())
