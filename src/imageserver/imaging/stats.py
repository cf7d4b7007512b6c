"""Statistics of a reduced view: overall moments, 16 radial shells, and the spot count.

Legacy semantics (legacy-server.md §4.3-4.4) with its bugs fixed: sums are exact (int64) or
float64, so 32-bit frames get a correct stddev (B3); an empty view reports min = max = 0
instead of −1 (B22). The standard deviation is computed from deviations about the mean (two
passes), not from sum² − mean², which loses every digit for values near 3e9.

Geometry: the beam centre comes in source pixels with pixel *centres* at integer coordinates
(`formats.base`), so its source edge coordinate is beam + 0.5; it is mapped to the output grid
with the view's scale, and a pixel's distance is measured at its centre (r + 0.5, c + 0.5).
The shells are 16 equal-area annuli (equal steps of r²) from the rectangle the output pixel
centres span (distance 0 when the beam falls inside it, i.e. on the view but for a half-pixel
rim) to the farthest output pixel centre. Legacy took the nearest *corner*, which lumps every
pixel nearer than it into shell 0 when the beam is off to one side of a zoomed tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imageserver.imaging import kernels
from imageserver.imaging.reduce import Reduced, row_blocks
from imageserver.threads import run_blocks

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

N_SHELLS = 16
SPOT_SENSITIVITY = 1.5
"""A spot is a pixel more than 1.5 × its shell's rms above the shell mean (legacy: rms, not sd)."""
MAX_BEAM_PX = 1e7
"""Beam centres farther than this (or NaN) are treated as absent: no shells, no spot count."""


@dataclass(frozen=True)
class Shell:
    """Moments of the usable pixels in one shell (or the whole view)."""

    n: int
    mean: float
    rms: float
    stddev: float
    min: int
    max: int


@dataclass(frozen=True)
class ViewStats:
    """Statistics over usable output pixels (OK and SATURATED; MASKED ones are left out)."""

    n: int
    mean: float
    stddev: float
    rms: float
    min: int
    max: int
    saturated: int
    spots: int | None
    shells: tuple[Shell, ...]

    @classmethod
    def from_overall(
        cls, overall: Shell, *, saturated: int, spots: int | None, shells: tuple[Shell, ...]
    ) -> ViewStats:
        """The view's statistics: the whole-view moments plus the per-shell details."""
        return cls(
            n=overall.n,
            mean=overall.mean,
            stddev=overall.stddev,
            rms=overall.rms,
            min=overall.min,
            max=overall.max,
            saturated=saturated,
            spots=spots,
            shells=shells,
        )


@dataclass(frozen=True)
class ShellGeometry:
    """Beam centre in output coordinates and the squared-distance range the shells divide."""

    beam_x: float
    beam_y: float
    d2_min: float
    d2_max: float

    def shell_scale(self, n_shells: int) -> float:
        """Shells per unit of d²; 0 puts every pixel in shell 0 when the range is empty."""
        span = self.d2_max - self.d2_min
        return n_shells / span if span > 0.0 else 0.0


def view_stats(
    reduced: Reduced, beam_center_x_px: float | None, beam_center_y_px: float | None
) -> ViewStats:
    """Moments of the view; with a beam centre also the shells and the spot count."""
    values = np.ascontiguousarray(reduced.values)
    flags = np.ascontiguousarray(reduced.flags)
    if is_usable_beam(beam_center_x_px) and is_usable_beam(beam_center_y_px):
        geometry = shell_geometry(reduced, beam_center_x_px, beam_center_y_px)  # type: ignore[arg-type]
        n_shells = N_SHELLS
    else:
        geometry, n_shells = ShellGeometry(0.0, 0.0, 0.0, 0.0), 1
    blocks = row_blocks(values.shape[0], values.size)
    n_blocks = len(blocks)
    shell_of_pixel = np.empty(values.shape, dtype=np.uint8)
    counts = np.zeros((n_blocks, n_shells), dtype=np.int64)
    sums = np.zeros((n_blocks, n_shells), dtype=np.int64)
    sums2 = np.zeros((n_blocks, n_shells), dtype=np.float64)
    mins = np.full((n_blocks, n_shells), np.iinfo(np.int64).max, dtype=np.int64)
    maxs = np.full((n_blocks, n_shells), -1, dtype=np.int64)
    scale = geometry.shell_scale(n_shells)
    index_of = {start: i for i, (start, _) in enumerate(blocks)}

    def moments_of_rows(start: int, stop: int) -> None:
        i, rows = index_of[start], slice(start, stop)
        kernels.shell_moments(
            values[rows], flags[rows], start, geometry.beam_x, geometry.beam_y, geometry.d2_min,
            scale, shell_of_pixel[rows], counts[i], sums[i], sums2[i], mins[i], maxs[i],
        )  # fmt: skip

    run_blocks(moments_of_rows, blocks)
    counts, sums, sums2 = counts.sum(axis=0), sums.sum(axis=0), sums2.sum(axis=0)
    mins, maxs = mins.min(axis=0), maxs.max(axis=0)
    means = sums / np.maximum(counts, 1)
    spot_limits = SPOT_SENSITIVITY * np.sqrt(sums2 / np.maximum(counts, 1))
    dev2 = np.zeros((n_blocks, n_shells), dtype=np.float64)
    spots = np.zeros((n_blocks, n_shells), dtype=np.int64)

    def deviations_of_rows(start: int, stop: int) -> None:
        i, rows = index_of[start], slice(start, stop)
        kernels.shell_deviations(
            values[rows], flags[rows], shell_of_pixel[rows], means, spot_limits, dev2[i], spots[i]
        )

    run_blocks(deviations_of_rows, blocks)
    dev2 = dev2.sum(axis=0)
    moments = (counts, sums, sums2, dev2, mins, maxs)
    overall = make_shell(*moments)
    has_beam = n_shells == N_SHELLS
    return ViewStats.from_overall(
        overall,
        saturated=reduced.saturated_source_px,
        spots=int(spots.sum()) if has_beam else None,
        shells=one_shell_each(*moments) if has_beam else (),
    )


def is_usable_beam(position_px: float | None) -> bool:
    """A beam coordinate the shells can use: present, finite and not absurdly far away."""
    return position_px is not None and math.isfinite(position_px) and abs(position_px) < MAX_BEAM_PX


def shell_geometry(
    reduced: Reduced, beam_center_x_px: float, beam_center_y_px: float
) -> ShellGeometry:
    """Beam centre on the output grid; distance² to the pixel centres' span and the farthest."""
    view = reduced.view
    height, width = reduced.values.shape
    beam_x = (beam_center_x_px + 0.5 - view.x0_px) * width / view.window_w_px
    beam_y = (beam_center_y_px + 0.5 - view.y0_px) * height / view.window_h_px
    near_x = min(max(beam_x, 0.5), width - 0.5)
    near_y = min(max(beam_y, 0.5), height - 0.5)
    far_x = max(abs(beam_x - 0.5), abs(beam_x - (width - 0.5)))
    far_y = max(abs(beam_y - 0.5), abs(beam_y - (height - 0.5)))
    # x * x, as the kernels square each pixel's distance: Python's x ** 2 calls pow(), which
    # is off by one ulp for ~0.1 % of doubles, and the farthest pixel must land at exactly d²max.
    d2_min = (beam_x - near_x) * (beam_x - near_x) + (beam_y - near_y) * (beam_y - near_y)
    return ShellGeometry(beam_x, beam_y, d2_min, far_x * far_x + far_y * far_y)


def one_shell_each(
    counts: IntArray,
    sums: IntArray,
    sums2: FloatArray,
    dev2: FloatArray,
    mins: IntArray,
    maxs: IntArray,
) -> tuple[Shell, ...]:
    """`make_shell` of each shell alone, with the same arithmetic on Python scalars (16
    shells through NumPy cost ~1 ms per view, more than the kernels for a 256-wide tile)."""
    shells = []
    for n, total, total2, deviations2, low, high in zip(
        counts.tolist(), sums.tolist(), sums2.tolist(), dev2.tolist(), mins.tolist(),
        maxs.tolist(), strict=True,
    ):  # fmt: skip
        if n == 0:
            shells.append(Shell(n=0, mean=0.0, rms=0.0, stddev=0.0, min=0, max=0))
            continue
        mean = total / n
        offset = float(total) / float(n) - mean  # as make_shell: float64 quotient − exact one
        shells.append(
            Shell(
                n=n,
                mean=mean,
                rms=math.sqrt(total2 / n),
                stddev=math.sqrt((deviations2 + n * offset**2) / n),
                min=low,
                max=high,
            )
        )
    return tuple(shells)


def make_shell(
    counts: IntArray,
    sums: IntArray,
    sums2: FloatArray,
    dev2: FloatArray,
    mins: IntArray,
    maxs: IntArray,
) -> Shell:
    """Moments of the union of the given shells (one shell, or all of them for the view).

    Squared deviations about the union's mean are summed per shell with the parallel-axis
    rule, so no precision is lost however large the values.
    """
    n = int(counts.sum())
    if n == 0:
        return Shell(n=0, mean=0.0, rms=0.0, stddev=0.0, min=0, max=0)
    filled = counts > 0
    mean = int(sums.sum()) / n
    shell_means = sums[filled] / counts[filled]
    deviations2 = float(np.sum(dev2[filled] + counts[filled] * (shell_means - mean) ** 2))
    return Shell(
        n=n,
        mean=mean,
        rms=math.sqrt(float(sums2.sum()) / n),
        stddev=math.sqrt(deviations2 / n),
        min=int(mins[filled].min()),
        max=int(maxs[filled].max()),
    )
