"""DIALS reads a synthetic Eiger2 series as we do: the same detector, spots and resolution.

DIALS 3.12 (dxtbx 3.11) builds its models from the master's NXmx geometry; its spot finder
then runs on frame 1 alone and is held to the issue's bar against ``analyse_file``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imageserver.analysis import analyse_file
from imageserver.formats import read_meta
from imageserver.sampledata.eiger import write_eiger_series
from imageserver.sampledata.pattern import centred_geometry
from test_analysis import within_tolerance

DIALS_PATH = "/usr/bin:/bin"
DIALS_ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    "PATH": DIALS_PATH,
    "PYTHONNOUSERSITE": "1",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("dials.import", path=DIALS_PATH) is None,
        reason=f"DIALS is not installed (no dials.import in {DIALS_PATH})",
    ),
]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Eiger2 4M series of two frames, one per data file as the DCU splits them.

    DIALS 3.12 reads frames only from the first data file a master links (later dxtbx walks
    them all), so frame 2 is beyond it here; frame 1 is what this module compares.
    """
    geometry = centred_geometry(2068, 2162, 75e-6)
    directory = tmp_path_factory.mktemp("eiger-dials")
    return write_eiger_series(directory, "s", geometry=geometry, n_frames=2)


def dials_frame_counts(master: Path, frame: int, workdir: Path) -> dict[str, float]:
    """DIALS's per-image numbers of one frame of a series, imported alone.

    `test_analysis.dials_counts` imports the whole file: here two frames as one sweep, in which
    dials.find_spots joins spots across neighbouring frames (frame 1 of this series counted
    302 spots so, 412 alone), and DIALS 3.12 cannot read frame 2 from the second data file.
    The issue's numbers are those of one image.
    """
    for command in (
        ["dials.import", str(master), f"image_range={frame},{frame}"],
        ["dials.find_spots", "imported.expt"],
        ["dials.spot_counts_per_image", "imported.expt", "strong.refl", "json=counts.json"],
    ):
        subprocess.run(command, cwd=workdir, env=DIALS_ENV, check=True, capture_output=True)
    counts = json.loads((workdir / "counts.json").read_text())
    return {key: values[0] for key, values in counts.items()}


@pytest.fixture(scope="module")
def dials(series: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], Path]:
    """DIALS's per-image numbers of frame 1 and the directory holding its imported.expt."""
    workdir = tmp_path_factory.mktemp("dials-run")
    return dials_frame_counts(series, 1, workdir), workdir


def beam_centre_px_and_distance_mm(experiments: dict[str, Any]) -> tuple[float, float, float]:
    """Where DIALS's beam meets its panel (pixels from the panel's corner) and the panel's
    distance from the sample along its normal."""
    panel = experiments["detector"][0]["panels"][0]
    origin, fast, slow = (np.array(panel[key]) for key in ("origin", "fast_axis", "slow_axis"))
    incident = -np.array(experiments["beam"][0]["direction"])  # stored towards the source
    # origin + u·fast + v·slow = t·incident
    u_mm, v_mm, _ = np.linalg.solve(np.column_stack([fast, slow, -incident]), -origin)
    pixel_x_mm, pixel_y_mm = panel["pixel_size"]
    return u_mm / pixel_x_mm, v_mm / pixel_y_mm, float(origin @ np.cross(fast, slow))


def test_dials_detector_and_scan_are_the_masters(
    series: Path, dials: tuple[dict[str, float], Path]
) -> None:
    meta = read_meta(series)
    experiments = json.loads((dials[1] / "imported.expt").read_text())
    (panel,) = experiments["detector"][0]["panels"]
    beam_x, beam_y, distance_mm = beam_centre_px_and_distance_mm(experiments)
    assert meta.pixel_size_x_m and meta.pixel_size_y_m and meta.distance_m

    assert panel["image_size"] == [meta.width_px, meta.height_px]
    assert panel["pixel_size"] == pytest.approx(
        [meta.pixel_size_x_m * 1000, meta.pixel_size_y_m * 1000], rel=1e-6
    )
    assert (beam_x, beam_y) == pytest.approx(
        (meta.beam_center_x_px, meta.beam_center_y_px), abs=1e-4
    )
    assert distance_mm == pytest.approx(meta.distance_m * 1000, rel=1e-6)
    assert experiments["beam"][0]["wavelength"] == pytest.approx(meta.wavelength_a, rel=1e-6)
    assert panel["trusted_range"] == [-1, meta.saturation_value]
    assert panel["material"] == meta.native["sensor_material"]
    assert panel["thickness"] == pytest.approx(meta.native["sensor_thickness"] * 1000, rel=1e-6)
    assert experiments["scan"][0]["image_range"] == [1, 1]
    assert experiments["scan"][0]["oscillation"] == pytest.approx([0.0, 0.1])
    assert experiments["goniometer"][0]["rotation_axis"] == [1.0, 0.0, 0.0]


def test_frame_1_spots_agree_with_dials(series: Path, dials: tuple[dict[str, float], Path]) -> None:
    counts = dials[0]
    ours = analyse_file(series, 1).stats.as_dict()

    assert within_tolerance(ours["n_spots_total"], int(counts["n_spots_total"])), (
        ours["n_spots_total"],
        counts["n_spots_total"],
    )
    assert ours["estimated_d_min"] == pytest.approx(counts["estimated_d_min"], abs=0.1)
