"""Synthetic diffraction frames: what a crystal on a beamline looks like, made fast with NumPy.

Each frame has a background falling with resolution, an ice ring, a beam-stop shadow with
its arm, and Bragg spots on a rotating pseudo-lattice (a few saturated). Gaps and bad pixels
are not drawn here; the format writers add them as their detector does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Geometry:
    """Detector and beam as a sample file describes them."""

    width_px: int
    height_px: int
    beam_x_px: float
    beam_y_px: float
    distance_m: float
    wavelength_a: float
    pixel_size_m: float


def centred_geometry(
    width_px: int,
    height_px: int,
    pixel_size_m: float,
    distance_m: float = 0.2,
    wavelength_a: float = 0.97934,
) -> Geometry:
    """A geometry with the beam slightly off the detector centre, as on a real beamline."""
    return Geometry(
        width_px=width_px,
        height_px=height_px,
        beam_x_px=width_px * 0.5 + 12.25,
        beam_y_px=height_px * 0.5 - 7.75,
        distance_m=distance_m,
        wavelength_a=wavelength_a,
        pixel_size_m=pixel_size_m,
    )


@lru_cache(maxsize=4)
def _background(geometry: Geometry) -> npt.NDArray[np.float32]:
    """Mean counts per pixel without spots: solvent scatter, ice ring, beam-stop shadow."""
    h, w = geometry.height_px, geometry.width_px
    y = (np.arange(h, dtype=np.float32) - geometry.beam_y_px)[:, None]
    x = (np.arange(w, dtype=np.float32) - geometry.beam_x_px)[None, :]
    r_px = np.sqrt(x * x + y * y)
    two_theta = np.arctan(r_px * np.float32(geometry.pixel_size_m / geometry.distance_m))
    d_a = geometry.wavelength_a / (2.0 * np.sin(np.maximum(two_theta * 0.5, 1e-6)))
    inv_d = (1.0 / d_a).astype(np.float32)
    background = 6.0 + 60.0 * np.exp(-((inv_d - 0.30) ** 2) / 0.02)  # solvent halo near 3.3 Å
    background += 5.0 * np.exp(-inv_d / 0.08)  # air scatter near the beam
    background += 40.0 * np.exp(-((d_a - 3.67) ** 2) / (2 * 0.02**2))  # hexagonal ice ring
    beam_stop_px = 0.012 / geometry.pixel_size_m * 0.5
    shadow = r_px < beam_stop_px
    arm = (np.abs(y) < beam_stop_px * 0.35) & (x > 0)  # the arm holding the stop
    background[shadow | np.broadcast_to(arm, shadow.shape)] *= 0.02
    return background.astype(np.float32)


def synth_frame(
    geometry: Geometry,
    frame_index: int,
    saturation: int,
    seed: int = 2026,
) -> npt.NDArray[np.int64]:
    """Counts of one frame (before gaps and bad pixels), clipped to ``saturation``.

    Deterministic for (geometry, frame_index, seed); consecutive frames rotate the lattice
    by 0.1° so spots move like a rotation series.
    """
    rng = np.random.default_rng(seed + 7919 * frame_index)
    background = _background(geometry)
    counts = rng.poisson(background).astype(np.int64)
    _add_spots(counts, geometry, frame_index, saturation, rng)
    np.minimum(counts, saturation, out=counts)
    return counts


def _add_spots(
    counts: npt.NDArray[np.int64],
    geometry: Geometry,
    frame_index: int,
    saturation: int,
    rng: np.random.Generator,
) -> None:
    """Gaussian Bragg spots on a 2-D pseudo-lattice, brighter at low resolution."""
    h, w = counts.shape
    cell_px = max(w, h) / 60.0
    angle = np.deg2rad(17.0 + 0.1 * frame_index)
    n = np.arange(-40, 41)
    hh, kk = np.meshgrid(n, n)
    u = hh * cell_px * np.cos(angle) - kk * cell_px * np.sin(angle) * 1.07
    v = hh * cell_px * np.sin(angle) + kk * cell_px * np.cos(angle) * 1.07
    # Only reflections near the Ewald sphere light up in a given frame.
    phase = (hh * 0.37 + kk * 0.61 + frame_index * 0.05) % 1.0
    keep = phase < 0.12
    xs = (u[keep] + geometry.beam_x_px).ravel()
    ys = (v[keep] + geometry.beam_y_px).ravel()
    r = np.hypot(xs - geometry.beam_x_px, ys - geometry.beam_y_px)
    inside = (xs > 3) & (xs < w - 4) & (ys > 3) & (ys < h - 4) & (r > 0.06 * max(w, h))
    xs, ys, r = xs[inside], ys[inside], r[inside]
    peak = 20000.0 * np.exp(-r / (0.18 * max(w, h))) * rng.uniform(0.05, 1.0, xs.size)
    peak[rng.uniform(size=xs.size) < 0.03] = saturation * 4.0  # a few overloads
    sigma = 0.9
    offsets = np.arange(-3, 4)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    for x, y, p in zip(xs, ys, peak, strict=True):
        xi, yi = int(x), int(y)
        dx, dy = ox + (xi - x), oy + (yi - y)
        patch = p * np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
        counts[yi - 3 : yi + 4, xi - 3 : xi + 4] += patch.astype(np.int64)


def module_gaps(
    width_px: int,
    height_px: int,
    module_w_px: int,
    module_h_px: int,
    gap_x_px: int,
    gap_y_px: int,
) -> npt.NDArray[np.bool_]:
    """True on the insensitive strips between detector modules (Eiger, Pilatus layouts)."""
    col = np.arange(width_px) % (module_w_px + gap_x_px) >= module_w_px
    row = np.arange(height_px) % (module_h_px + gap_y_px) >= module_h_px
    return row[:, None] | col[None, :]
