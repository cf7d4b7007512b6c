"""Counts, RMSDs and per-image resolution from DIALS's files; runs in DIALS's own Python.

Started by the pipeline as ``PYTHON -I dials_report.py OUT.json`` in the job's directory, after
``dials.refine_bravais_settings``: it reads imported.expt, strong.refl and indexed.refl with
DIALS's own readers (the reflection files are DIALS's binary format) and writes one JSON object.
It imports nothing of this project, which DIALS's interpreter does not have.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def main(out_path: str) -> None:
    from dials.algorithms.spot_finding import per_image_analysis
    from dials.array_family import flex
    from dxtbx.model.experiment_list import ExperimentList

    imported = ExperimentList.from_file("imported.expt", check_format=False)
    strong = flex.reflection_table.from_file("strong.refl")
    indexed = flex.reflection_table.from_file("indexed.refl")
    n_indexed = int(indexed.get_flags(indexed.flags.indexed).count(True))
    report: dict[str, Any] = {
        "spots": {
            "strong": len(strong),
            "indexed": n_indexed,
            "indexed_fraction": round(n_indexed / len(strong), 4) if len(strong) else 0.0,
        },
        "rmsd": rmsds(indexed.select(indexed.get_flags(indexed.flags.used_in_refinement))),
        "images": per_image(per_image_analysis, imported, strong),
        "space_groups": chiral_space_groups(),
        "setting_space_groups": setting_space_groups(ExperimentList),
        "dials_version": dials_version(),
    }
    with open(out_path, "w") as stream:
        json.dump(report, stream)


def rmsds(used: Any) -> dict[str, Any]:
    """Observed minus calculated centroids of the spots refinement used: x, y in px, phi in °."""
    if len(used) == 0:
        return {"x_px": None, "y_px": None, "phi_deg": None, "n_spots": 0}
    x_obs, y_obs, _ = used["xyzobs.px.value"].parts()
    x_cal, y_cal, _ = used["xyzcal.px"].parts()
    _, _, phi_obs = used["xyzobs.mm.value"].parts()
    _, _, phi_cal = used["xyzcal.mm"].parts()

    def rms(observed: Any, calculated: Any) -> float:
        difference = observed - calculated
        return math.sqrt(sum(value * value for value in difference) / len(difference))

    return {
        "x_px": round(rms(x_obs, x_cal), 4),
        "y_px": round(rms(y_obs, y_cal), 4),
        "phi_deg": round(math.degrees(rms(phi_obs, phi_cal)), 4),
        "n_spots": len(used),
    }


def chiral_space_groups() -> dict[str, list[str]]:
    """Bravais lattice -> the chiral space groups it allows (macromolecules and amino acids)."""
    from cctbx import sgtbx
    from cctbx.sgtbx import bravais_types

    table: dict[str, list[str]] = {}
    for number in range(1, 231):
        group = sgtbx.space_group_info(number=number).group()
        if group.is_chiral():
            lattice = str(bravais_types.bravais_lattice(group=group))
            table.setdefault(lattice, []).append(group.type().lookup_symbol())
    table["mI"] = ["I 1 2 1"]  # as dials.refine_bravais_settings lists it
    return table


def setting_space_groups(experiment_list: Any) -> dict[str, str]:
    """Solution number -> the space group dials.refine_bravais_settings gave its setting."""
    import glob
    import re

    groups = {}
    for path in glob.glob("bravais_setting_*.expt"):
        number = re.search(r"_(\d+)\.expt$", path)
        crystal = experiment_list.from_file(path, check_format=False)[0].crystal
        if number and crystal is not None:
            groups[number[1]] = crystal.get_space_group().type().lookup_symbol()
    return groups


def dials_version() -> str | None:
    try:
        from dials.util.version import dials_version as version
    except ImportError:
        return None
    return str(version())


def per_image(analysis: Any, experiments: Any, strong: Any) -> list[dict[str, Any]]:
    """DIALS's per-image spot statistics (as dials.spot_counts_per_image gives them)."""
    strong.centroid_px_to_mm(experiments)
    strong.map_centroids_to_reciprocal_space(experiments)
    experiment = experiments[0]
    stats = analysis.stats_per_image(experiment, strong, resolution_analysis=True)
    first = experiment.scan.get_image_range()[0] if experiment.scan else 1
    rows = []
    for offset in range(len(stats.n_spots_total)):
        d_min = stats.estimated_d_min[offset]
        rows.append(
            {
                "image": first + offset,
                "n_spots_total": stats.n_spots_total[offset],
                "n_spots_no_ice": stats.n_spots_no_ice[offset],
                "estimated_d_min": round(d_min, 3) if d_min and d_min > 0 else None,
            }
        )
    return rows


if __name__ == "__main__":
    main(sys.argv[1])
