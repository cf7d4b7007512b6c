"""The main job on embedded defaults: write sample data, render views of it, say what was done.

It shows the whole imaging core on a fresh machine with nothing but this package: every
format's sample file rendered, a zoomed tile, a colour map, thumbnails of every frame.
"""

from __future__ import annotations

import time
from pathlib import Path

from imageserver.formats import read_meta
from imageserver.imaging.reduce import warm_up
from imageserver.render import Look, ViewSpec, render_file
from imageserver.sampledata.dataset import EIGER16M_MASTER, write_sample_data
from imageserver.thumbnails import make_thumbnails

_READY_MARK = ".sample-data-complete"


def run_demo(directory: Path, *, n_frames: int = 4) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    mark = directory / _READY_MARK
    if not mark.exists():
        print(f"writing sample data to {directory}/ (one-time, about a minute) ...", flush=True)
        started = time.perf_counter()
        write_sample_data(directory, n_frames=n_frames)
        mark.write_text("ok\n")
        print(f"  done in {time.perf_counter() - started:.1f} s")
    warm_up()
    views = directory / "views"
    views.mkdir(exist_ok=True)
    master = directory / EIGER16M_MASTER
    jobs: list[tuple[str, ViewSpec, Look]] = [
        (
            "eiger16m_frame1.jpg",
            ViewSpec(master, frame=1, xsize=1024),
            Look(label="Eiger2 X 16M", label_height_px=16),
        ),
        ("eiger16m_frame2_heat.jpg", ViewSpec(master, frame=2, xsize=1024), Look(colormap="heat")),
        (
            "eiger16m_zoom4_tile_1_1.jpg",
            ViewSpec(master, frame=1, xsize=512, zoom=4, segcol=1, segrow=1),
            Look(),
        ),
    ]
    for sample in sorted(directory.iterdir()):
        is_sample = sample.is_file() and not sample.name.startswith(".")
        if is_sample and "_data_" not in sample.name and sample.name != EIGER16M_MASTER:
            jobs.append((f"{sample.name}.jpg", ViewSpec(sample, xsize=1024), Look()))
    print(f"rendering views into {views}/")
    for name, spec, look in jobs:
        started = time.perf_counter()
        image, reduced = render_file(spec, look)
        elapsed_ms = (time.perf_counter() - started) * 1000
        (views / name).write_bytes(image.data)
        print(
            f"  {name:<36} {image.width_px}×{image.height_px}  {elapsed_ms:6.1f} ms  "
            f"black {image.levels.black} white {image.levels.white}  "
            f"spots {reduced.stats.spots}"
        )
    meta = read_meta(master)
    print(
        f"{master.name}: {meta.width_px}×{meta.height_px} px, {meta.bit_depth}-bit, "
        f"frames {meta.first_frame}..{meta.last_frame}, beam centre "
        f"({meta.beam_center_x_px}, {meta.beam_center_y_px}) px, "
        f"{meta.wavelength_a} Å, {meta.distance_m} m"
    )
    report = make_thumbnails([directory], out_dir=directory / "thumbnails", size_px=256)
    print(report.summary())
    print(
        "try: imageserver jpeg "
        f"{master} --frame 2 --size 800 --zoom 2 --segcol 0 --segrow 1 -o view.jpg\n"
        f"     imageserver meta {master} --frame 2"
    )
    return 0 if not report.failures else 1
