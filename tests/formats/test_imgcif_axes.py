"""The detector's panel from a full CBF's axis tables, as DIALS builds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imageserver.analysis import AnalysisParams, analyse_file
from imageserver.formats import read_meta
from imageserver.formats.imgcif_axes import detector_panel
from imageserver.imaging.resolution import Geometry

# dials.import of l-cyst_01_00001.cbf (DIALS 3.12.1), then dials.show: the panel's origin
# (mm), fast and slow axes; the beam travels along −z.
DIALS_L_CYSTEINE_PANEL = (
    (-148.78, -28.7381, -201.344),
    (0.0, 0.866025, 0.5),
    (1.0, 0.0, 0.0),
)

TWO_THETA_TABLES = [
    {"_axis.id": "SOURCE", "_axis.type": "general", "_axis.depends_on": ".",
     "_axis.vector[1]": "0", "_axis.vector[2]": "0", "_axis.vector[3]": "1"},
    {"_axis.id": "DET_2THETA", "_axis.type": "rotation", "_axis.depends_on": ".",
     "_axis.vector[1]": "1", "_axis.vector[2]": "0", "_axis.vector[3]": "0"},
    {"_axis.id": "DET_Z", "_axis.type": "translation", "_axis.depends_on": "DET_2THETA",
     "_axis.vector[1]": "0", "_axis.vector[2]": "0", "_axis.vector[3]": "-1"},
    {"_axis.id": "ELEMENT_X", "_axis.type": "translation", "_axis.depends_on": "DET_Z",
     "_axis.vector[1]": "0", "_axis.vector[2]": "1", "_axis.vector[3]": "0",
     "_axis.offset[1]": "-10", "_axis.offset[2]": "-20", "_axis.offset[3]": "0"},
    {"_axis.id": "ELEMENT_Y", "_axis.type": "translation", "_axis.depends_on": "ELEMENT_X",
     "_axis.vector[1]": "1", "_axis.vector[2]": "0", "_axis.vector[3]": "0"},
    {"_diffrn_scan_frame_axis.axis_id": "DET_2THETA", "_diffrn_scan_frame_axis.angle": "90",
     "_diffrn_scan_frame_axis.displacement": "0.0"},
    {"_diffrn_scan_frame_axis.axis_id": "DET_Z", "_diffrn_scan_frame_axis.angle": "0.0",
     "_diffrn_scan_frame_axis.displacement": "100"},
    {"_array_structure_list.axis_set_id": "ELEMENT_X", "_array_structure_list.precedence": "1",
     "_array_structure_list.direction": "increasing"},
    {"_array_structure_list.axis_set_id": "ELEMENT_Y", "_array_structure_list.precedence": "2",
     "_array_structure_list.direction": "increasing"},
    {"_array_structure_list_axis.axis_set_id": "ELEMENT_X",
     "_array_structure_list_axis.axis_id": "ELEMENT_X"},
    {"_array_structure_list_axis.axis_set_id": "ELEMENT_Y",
     "_array_structure_list_axis.axis_id": "ELEMENT_Y"},
]  # fmt: skip


def test_the_l_cysteine_panel_is_the_one_dials_builds(shared_data: Path) -> None:
    meta = read_meta(shared_data / "l-cysteine" / "l-cyst_01_00001.cbf")
    assert meta.panel is not None
    origin, fast, slow, beam = (meta.panel[i : i + 3] for i in range(0, 12, 3))
    for ours, dials in zip((origin, fast, slow), DIALS_L_CYSTEINE_PANEL, strict=True):
        assert ours == pytest.approx(dials, abs=1e-3)
    assert beam == pytest.approx((0, 0, -1))


def test_a_90_degree_arm_turns_the_panel_and_its_origin() -> None:
    panel = detector_panel(TWO_THETA_TABLES)
    assert panel is not None
    origin, fast, slow, beam = (panel[i : i + 3] for i in range(0, 12, 3))
    # Rotating (−10, −20, −100) by 90° about x: y → z, z → −y.
    assert origin == pytest.approx((-10, 100, -20))
    assert fast == pytest.approx((0, 0, 1)) and slow == pytest.approx((1, 0, 0))
    assert beam == pytest.approx((0, 0, -1))


@pytest.mark.parametrize(
    "broken",
    [
        [row for row in TWO_THETA_TABLES if "_array_structure_list.axis_set_id" not in row],
        [row for row in TWO_THETA_TABLES if row.get("_axis.id") != "DET_Z"],  # chain cut
        [{**row, "_axis.depends_on": "ELEMENT_Y"} if row.get("_axis.id") == "DET_2THETA" else row
         for row in TWO_THETA_TABLES],  # a loop
        [{**row, "_axis.type": "general"} if row.get("_axis.id") == "DET_Z" else row
         for row in TWO_THETA_TABLES],
        [],
    ],
)  # fmt: skip
def test_incomplete_or_damaged_tables_give_no_panel(broken: list[dict[str, str]]) -> None:
    assert detector_panel(broken) is None


def test_a_panel_normal_to_the_beam_gives_the_header_models_resolution() -> None:
    flat = Geometry(1000.0, 1200.0, 0.2, 1.0, 172e-6, 172e-6)
    as_panel = Geometry(
        1000.0, 1200.0, 0.2, 1.0, 172e-6, 172e-6,
        panel=(-172.0, -206.4, 200.0, 1, 0, 0, 0, 1, 0, 0, 0, 1),
    )  # fmt: skip
    xs, ys = np.array([0.0, 500.0, 2000.0]), np.array([0.0, 1199.5, 100.0])
    assert as_panel.d_spacing_a(xs, ys) == pytest.approx(flat.d_spacing_a(xs, ys), rel=1e-12)


def test_resolution_limits_on_a_tilted_panel_keep_only_spots_inside(shared_data: Path) -> None:
    path = shared_data / "l-cysteine" / "l-cyst_01_00013.cbf"
    every = analyse_file(path)
    d_all = [spot["d_a"] for spot in every.to_json()["spots"]]
    d_min, d_max = sorted(d_all)[2], sorted(d_all)[-3]
    limited = analyse_file(path, params=AnalysisParams(d_min=d_min - 1e-6, d_max=d_max + 1e-6))
    d_kept = [spot["d_a"] for spot in limited.to_json()["spots"]]
    assert d_kept and all(d_min - 0.01 <= d <= d_max + 0.01 for d in d_kept)
    assert len(d_kept) < len(d_all)
