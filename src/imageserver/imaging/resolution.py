"""Resolution of detector positions on a flat panel, parallax included.

The panel is the file's own (`FrameMeta.panel`: a full CBF's axes, e.g. a detector on a 2θ
arm) or, by default, normal to the beam at the header's beam centre, taken as DIALS takes it:
dxtbx turns the centre into millimetres from the detector's corner, so a pixel index i sits at
i + 0.5 from it. Like DIALS for pixel-array detectors, the position where a photon is counted
is corrected for its mean absorption depth in the sensor (parallax; without it, d is off by
up to 0.15 % at the edge, enough to move a spot across an ice ring's edge); d is then
1/|s1 − s0|, as DIALS maps a centroid to reciprocal space.
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
    panel: tuple[float, ...] | None = None
    """The file's panel (`FrameMeta.panel`); None: normal to the beam at the beam centre."""

    @property
    def is_normal_to_beam(self) -> bool:
        """True when resolution depends only on the distance from the beam centre."""
        return self.panel is None

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
        geometry = cls(bx, by, distance, wavelength, px, py, panel=meta.panel)
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
        origin, fast, slow, beam = self._panel_mm()
        x_mm = (np.asarray(x_px, dtype=np.float64) + 0.5) * (self.pixel_size_x_m * 1000)
        y_mm = (np.asarray(y_px, dtype=np.float64) + 0.5) * (self.pixel_size_y_m * 1000)
        if self.sensor_thickness_mm > 0:
            x_mm, y_mm = self._parallax_corrected(x_mm, y_mm, origin, fast, slow)
        lab, length = _rays(x_mm, y_mm, origin, fast, slow)
        d_star_sq = sum((lab[i] / length - beam[i]) ** 2 for i in range(3)) / (
            self.wavelength_a * self.wavelength_a
        )
        with np.errstate(divide="ignore"):
            return cast(FloatArray, 1.0 / np.sqrt(d_star_sq))

    def _panel_mm(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Origin (mm), fast, slow and beam directions; the default panel puts the beam
        centre on the beam, the detector at ``distance_m`` along it."""
        if self.panel is not None:
            numbers = np.asarray(self.panel, dtype=np.float64)
            return numbers[0:3], numbers[3:6], numbers[6:9], numbers[9:12]
        origin = np.array(
            [
                -self.beam_x_px * self.pixel_size_x_m * 1000,
                -self.beam_y_px * self.pixel_size_y_m * 1000,
                self.distance_m * 1000,
            ]
        )
        return origin, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])

    def _parallax_corrected(
        self,
        x_mm: FloatArray,
        y_mm: FloatArray,
        origin: FloatArray,
        fast: FloatArray,
        slow: FloatArray,
    ) -> tuple[FloatArray, FloatArray]:
        """Where the ray met the sensor's front, from where it was counted (DIALS's
        attenuation length along the ray, projected on the panel's axes)."""
        normal = np.cross(fast, slow)
        if float(np.dot(origin, normal)) < 0:
            normal = -normal
        lab, length = _rays(x_mm, y_mm, origin, fast, slow)
        unit = [component / length for component in lab]
        cos_t = sum(unit[i] * normal[i] for i in range(3))
        mu, t0 = self.sensor_mu_per_mm, self.sensor_thickness_mm
        path_mm = t0 / cos_t  # through the sensor along the ray
        depth = 1.0 / mu - (path_mm + 1.0 / mu) * np.exp(-mu * path_mm)
        along_fast = sum(unit[i] * fast[i] for i in range(3))
        along_slow = sum(unit[i] * slow[i] for i in range(3))
        return x_mm - along_fast * depth, y_mm - along_slow * depth

    def radius_sq_m2(self, d_a: float) -> float:
        """Squared distance from the beam (m²) at which resolution d_a is reached, without
        parallax (inf when a flat detector never reaches it); only for a detector normal to
        the beam (`is_normal_to_beam`)."""
        sin_theta = self.wavelength_a / (2.0 * d_a)
        if sin_theta >= 1.0:
            return math.inf
        two_theta = 2.0 * math.asin(sin_theta)
        if two_theta >= math.pi / 2:
            return math.inf
        return (self.distance_m * math.tan(two_theta)) ** 2


def _rays(
    x_mm: FloatArray, y_mm: FloatArray, origin: FloatArray, fast: FloatArray, slow: FloatArray
) -> tuple[list[FloatArray], FloatArray]:
    """The laboratory components of the rays to panel positions (mm), and their lengths."""
    lab = [origin[i] + x_mm * fast[i] + y_mm * slow[i] for i in range(3)]
    return lab, np.sqrt(lab[0] * lab[0] + lab[1] * lab[1] + lab[2] * lab[2])
