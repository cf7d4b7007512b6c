"""Acceptance on real data: 15 frames of L-cysteine index to its known orthorhombic cell."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from imageserver.cli import main
from imageserver.indexing.pipeline import dials_environment

TEST_DEADLINE_S = 600
"""DIALS needs about 80 s on a busy 2-core machine (10 s on a quiet workstation)."""

DIALS_INDEX = shutil.which("dials.index", path=dials_environment(os.environ)["PATH"])
needs_dials = pytest.mark.skipif(
    DIALS_INDEX is None,
    reason="DIALS is not installed (dials.index is not on PATH); "
    "scripts/setup --test installs it when run as root",
)
CELL = {"a": 5.42, "b": 8.13, "c": 12.02}
"""L-cysteine, P 21 21 21 (../shared/data/PROVENANCE.md)."""


@needs_dials
def test_l_cysteine_frames_1_to_15_index_to_its_orthorhombic_cell(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = shared_data / "l-cysteine" / "l-cyst_01_00001.cbf"
    started = time.monotonic()
    code = main(["index", str(first), "--frames", "1-15", "--scratch", str(tmp_path)])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 0, result

    assert result["lattice"] == "oP"
    assert "P 21 21 21" in result["space_group_candidates"]
    cell = result["unit_cell"]
    for axis, expected in CELL.items():
        assert cell[axis] == pytest.approx(expected, rel=0.01), (axis, cell)
    for angle in ("alpha", "beta", "gamma"):
        assert cell[angle] == pytest.approx(90.0, abs=0.01)
    spots = result["spots"]
    assert spots["strong"] >= 20
    assert 0.5 <= spots["indexed_fraction"] <= 1.0
    assert spots["indexed"] == round(spots["indexed_fraction"] * spots["strong"])
    assert 0 < result["rmsd"]["x_px"] < 1 and 0 < result["rmsd"]["y_px"] < 1
    assert 0 < result["rmsd"]["phi_deg"] < 0.2
    assert [row["image"] for row in result["images"]] == list(range(1, 16))
    assert result["bravais_settings"][0]["lattice"] == "oP"

    for step in ("importing 15 images", "finding spots", "indexing", "refining Bravais"):
        assert step in captured.err
    assert os.listdir(tmp_path) == []  # the scratch directory is gone
    print(f"l-cysteine indexed in {elapsed:.1f} s: {cell}")
