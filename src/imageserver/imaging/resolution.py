"""Resolution of detector positions: a flat detector normal to the beam, parallax included.

Enough for spot resolution until tilted detectors matter. The beam centre is the header's,
taken as DIALS takes it: dxtbx turns it into millimetres from the detector's corner, so a
pixel index i sits at i + 0.5 from it. Like DIALS for pixel-array detectors, the position
where a photon is counted is corrected for its mean absorption depth in the sensor (parallax;
without it, d is off by up to 0.15 % at the edge, enough to move a spot across an ice ring's
edge); d is then 1/|s1 − s0|, as DIALS maps a centroid to reciprocal space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import numpy.typing as npt

from imageserver.errors import MissingMetadataError
from imageserver.formats.base import HC_EV_ANGSTROM, FrameMeta

FloatArray = npt.NDArray[np.float64]

SILICON_MU_PER_MM = (
    (5000, 57.085), (6000, 34.251), (7000, 22.061), (8000, 15.070), (9000, 10.714),
    (10000, 7.8964), (11000, 5.9737), (12000, 4.6303), (13000, 3.6629), (14000, 2.9485),
    (15000, 2.4092), (16000, 1.9954), (17000, 1.6717), (18000, 1.4148), (20000, 1.0401),
    (22000, 0.79670), (25000, 0.55718), (30000, 0.33459),
)  # fmt: skip
"""Linear attenuation coefficient of silicon (mm⁻¹) by photon energy (eV): the tabulated
values DIALS uses, interpolated log-log (within 0.5 %, a micrometre of parallax)."""


def silicon_mu_per_mm(wavelength_a: float) -> float:
    energies = np.log([e for e, _ in SILICON_MU_PER_MM])
    mus = np.log([mu for _, mu in SILICON_MU_PER_MM])
    energy = math.log(HC_EV_ANGSTROM / wavelength_a)
    return float(np.exp(np.interp(energy, energies, mus)))


@dataclass(frozen=True)
class Geometry:
    """Beam centre (px), distance (m), wavelength (Å), pixel size (m) and the sensor's
    attenuation (mm⁻¹) and thickness (mm); a thickness of 0 means no parallax correction."""

    beam_x_px: float
    beam_y_px: float
    distance_m: float
    wavelength_a: float
    pixel_size_x_m: float
    pixel_size_y_m: float
    sensor_mu_per_mm: float = 0.0
    sensor_thickness_mm: float = 0.0

    @classmethod
    def from_meta(cls, meta: FrameMeta, path: object = "") -> Geometry:
        """The frame's geometry; the parallax needs a silicon sensor of known thickness."""
        values = {
            "beam_center_x_px": meta.beam_center_x_px,
            "beam_center_y_px": meta.beam_center_y_px,
            "distance_m": meta.distance_m,
            "wavelength_a": meta.wavelength_a,
            "pixel_size_x_m": meta.pixel_size_x_m,
            "pixel_size_y_m": meta.pixel_size_y_m,
        }
        missing = [k for k, v in values.items() if v is None or not math.isfinite(v)]
        missing += [
            k for k in ("distance_m", "wavelength_a", "pixel_size_x_m", "pixel_size_y_m")
            if k not in missing and cast(float, values[k]) <= 0
        ]  # fmt: skip
        if missing:
            raise MissingMetadataError(
                f"{path}: resolution needs {', '.join(missing)}, which the file does not give"
            )
        bx, by, distance, wavelength, px, py = (float(cast(float, v)) for v in values.values())
        geometry = cls(bx, by, distance, wavelength, px, py)
        thickness_m = meta.native.get("sensor_thickness")
        if meta.native.get("sensor_material") != "Si" or not isinstance(thickness_m, float):
            return geometry
        if not 0 < thickness_m < 0.01:
            return geometry
        return replace(
            geometry,
            sensor_mu_per_mm=silicon_mu_per_mm(wavelength),
            sensor_thickness_mm=thickness_m * 1000,
        )

    def d_spacing_a(self, x_px: FloatArray, y_px: FloatArray) -> FloatArray:
        """Resolution (Å) at pixel-index coordinates; inf at the beam itself."""
        px_mm, py_mm = self.pixel_size_x_m * 1000, self.pixel_size_y_m * 1000
        distance_mm = self.distance_m * 1000
        dx = (np.asarray(x_px, dtype=np.float64) + 0.5 - self.beam_x_px) * px_mm
        dy = (np.asarray(y_px, dtype=np.float64) + 0.5 - self.beam_y_px) * py_mm
        if self.sensor_thickness_mm > 0:
            length = np.sqrt(dx * dx + dy * dy + distance_mm * distance_mm)
            mu, t0 = self.sensor_mu_per_mm, self.sensor_thickness_mm
            path_mm = t0 * length / distance_mm  # through the sensor along the ray
            depth = 1.0 / mu - (path_mm + 1.0 / mu) * np.exp(-mu * path_mm)
            dx = dx - dx / length * depth
            dy = dy - dy / length * depth
        length = np.sqrt(dx * dx + dy * dy + distance_mm * distance_mm)
        d_star_sq = (
            (dx / length) ** 2 + (dy / length) ** 2 + (distance_mm / length - 1.0) ** 2
        ) / (self.wavelength_a * self.wavelength_a)
        with np.errstate(divide="ignore"):
            return cast(FloatArray, 1.0 / np.sqrt(d_star_sq))

    def radius_sq_m2(self, d_a: float) -> float:
        """Squared distance from the beam (m²) at which resolution d_a is reached, without
        parallax (inf when a flat detector never reaches it)."""
        sin_theta = self.wavelength_a / (2.0 * d_a)
        if sin_theta >= 1.0:
            return math.inf
        two_theta = 2.0 * math.asin(sin_theta)
        if two_theta >= math.pi / 2:
            return math.inf
        return (self.distance_m * math.tan(two_theta)) ** 2
