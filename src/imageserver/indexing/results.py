"""The result JSON of the built-in indexer, assembled from the files DIALS left behind.

The cell, lattice and candidate settings come from ``bravais_summary.json`` (plain JSON) and
the triclinic cell from ``indexed.expt`` (JSON too), so they never depend on DIALS's Python;
spot counts, RMSDs, per-image resolution and the space groups of each lattice come from the
report DIALS's Python wrote (`dials_report`), and are null when it could not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

CELL_KEYS = ("a", "b", "c", "alpha", "beta", "gamma")


def build_result(workdir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The job's result: the highest-symmetry recommended setting, and everything behind it.

    Screw axes cannot be told from indexed spots alone (that needs integrated intensities),
    so the chosen lattice's space groups are all candidates; ``space_group`` is the one DIALS
    assigns the setting, the lattice's lowest-symmetry group.
    """
    summary = json.loads((workdir / "bravais_summary.json").read_text())
    lattice_groups: dict[str, list[str]] = report.get("space_groups") or {}
    settings = [
        _setting(int(number), solution, lattice_groups.get(solution["bravais"]))
        for number, solution in summary.items()
    ]
    settings.sort(key=lambda setting: setting["solution"], reverse=True)
    recommended = [setting for setting in settings if setting["recommended"]] or settings
    chosen = recommended[0]
    return {
        "indexer": report.get("dials_version") or "DIALS",
        "unit_cell": dict(zip(CELL_KEYS, chosen["unit_cell"], strict=True)),
        "lattice": chosen["lattice"],
        "space_group": (report.get("setting_space_groups") or {}).get(str(chosen["solution"])),
        "space_group_candidates": chosen["space_groups"],
        "cb_op": chosen["cb_op"],
        "bravais_settings": settings,
        "triclinic_cell": dict(zip(CELL_KEYS, triclinic_cell(workdir), strict=True)),
        "spots": report.get("spots"),
        "rmsd": report.get("rmsd"),
        "images": report.get("images"),
    }


def _setting(number: int, solution: dict[str, Any], groups: list[str] | None) -> dict[str, Any]:
    return {
        "solution": number,
        "lattice": solution["bravais"],
        "unit_cell": [round(float(value), 4) for value in solution["unit_cell"]],
        "metric_fit_deg": round(float(solution["max_angular_difference"]), 4),
        "rmsd_mm": round(float(solution["rmsd"]), 4),
        "n_spots": int(solution["nspots"]),
        "cb_op": solution["cb_op"],
        "recommended": bool(solution["recommended"]),
        "space_groups": groups,
    }


def triclinic_cell(workdir: Path) -> list[float]:
    """a, b, c (Å) and alpha, beta, gamma (°) of the P 1 cell dials.index found."""
    crystal = json.loads((workdir / "indexed.expt").read_text())["crystal"][0]
    a, b, c = (np.asarray(crystal[f"real_space_{axis}"], dtype=float) for axis in "abc")
    lengths = [float(np.linalg.norm(vector)) for vector in (a, b, c)]

    def angle(u: np.ndarray, v: np.ndarray) -> float:
        cosine = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
        return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))

    angles = [angle(b, c), angle(a, c), angle(a, b)]
    return [round(value, 4) for value in lengths + angles]
