"""Per-frame analysis: DIALS's spots and per-image numbers of one frame, without the service.

`analyse` is the one call the `analysis` job, the command line and the benchmarks share: it
finds spots on the full-resolution frame (`imaging.spotfinder`), gives each its resolution,
and reduces them to DIALS's nine per-image fields (`imaging.per_image`). The result is plain
data with its JSON form, so it can be cached and sent as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import RequestError
from imageserver.formats import open_source
from imageserver.formats.base import AnyFrame
from imageserver.imaging.per_image import PerImageStats, per_image_stats
from imageserver.imaging.resolution import Geometry
from imageserver.imaging.spotfinder import ALGORITHMS, SpotFinderParams, find_spots


@dataclass(frozen=True)
class AnalysisParams:
    """What a request may choose; everything else is DIALS's default (`SpotFinderParams`).

    ``d_min``/``d_max`` (Å) mask pixels beyond that resolution before spot finding, as
    DIALS's spotfinder.filter.d_min/d_max do.
    """

    d_min: float | None = None
    d_max: float | None = None
    algorithm: str = "dispersion_extended"
    filter_ice: bool = True

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise RequestError(
                f"unknown algorithm {self.algorithm!r}; use {' or '.join(ALGORITHMS)}"
            )
        for name in ("d_min", "d_max"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):  # fmt: skip
                raise RequestError(f"{name} must be a positive number of ångström, not {value!r}")
        if self.d_min is not None and self.d_max is not None and self.d_min >= self.d_max:
            raise RequestError(f"d_min {self.d_min} Å must be below d_max {self.d_max} Å")
        if not isinstance(self.filter_ice, bool):
            raise RequestError(f"filter_ice must be true or false, not {self.filter_ice!r}")

    def spot_finder_params(self) -> SpotFinderParams:
        return SpotFinderParams(algorithm=self.algorithm)


@dataclass(frozen=True)
class Spot:
    """One spot: centroid in detector pixels (pixel centres at integer coordinates, as the
    beam centre in the frame's metadata), summed counts, pixels, resolution (Å; inf at the
    beam)."""

    x: float
    y: float
    intensity: float
    size_px: int
    d_a: float


@dataclass(frozen=True)
class AnalysisResult:
    """DIALS's per-image fields of one frame and its spots."""

    stats: PerImageStats
    spots: tuple[Spot, ...]

    def to_json(self) -> dict[str, Any]:
        """The reply's result: the nine fields under DIALS's names, then ``spots``."""
        return {
            **self.stats.as_dict(),
            "spots": [
                {
                    "x": round(spot.x, 2),
                    "y": round(spot.y, 2),
                    "intensity": spot.intensity,
                    "size_px": spot.size_px,
                    "d_a": round(spot.d_a, 3) if math.isfinite(spot.d_a) else None,
                }
                for spot in self.spots
            ],
        }


def analyse(frame: AnyFrame, params: AnalysisParams | None = None) -> AnalysisResult:
    """Spots and per-image numbers of one frame (decoded, or decoded here strip by strip).

    Needs the geometry (beam centre, distance, wavelength, pixel size): without it a
    `MissingMetadataError` names what the file lacks.
    """
    params = params or AnalysisParams()
    geometry = Geometry.from_meta(frame.meta, frame.path)
    spots = find_spots(
        frame,
        params.spot_finder_params(),
        geometry=geometry,
        d_min_a=params.d_min,
        d_max_a=params.d_max,
    )
    d_a = geometry.d_spacing_a(spots.x_px, spots.y_px)
    stats = per_image_stats(d_a, spots.intensity, filter_ice=params.filter_ice)
    columns = (spots.x_px, spots.y_px, spots.intensity, spots.size_px, d_a)
    listed = tuple(map(Spot, *(column.tolist() for column in columns)))  # Python numbers
    return AnalysisResult(stats=stats, spots=listed)


def analyse_file(
    path: Path,
    frame: int = 1,
    params: AnalysisParams | None = None,
    limits: LimitSettings = DEFAULT_LIMITS,
) -> AnalysisResult:
    """Open frame ``frame`` (1-based) of ``path`` and analyse it: the CLI's path (no cache)."""
    return analyse(open_source(path, frame, limits=limits), params)
