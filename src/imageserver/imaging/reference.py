"""Plain NumPy versions of the numba paths (reduction, statistics): slow, obviously right.

The tests require the numba results to equal these exactly; the benchmarks time both.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

from imageserver.formats.base import Frame, PixelArray
from imageserver.imaging.geometry import View, box_bounds
from imageserver.imaging.reduce import (
    Flags,
    Reduced,
    checked_mask,
    checked_pixels,
    saturation_threshold,
)
from imageserver.imaging.stats import (
    N_SHELLS,
    SPOT_SENSITIVITY,
    Shell,
    ShellGeometry,
    ViewStats,
    shell_geometry,
)

NO_PIXEL = -1


def reduce_frame_reference(frame: Frame, view: View) -> Reduced:
    """Same contract as `reduce.reduce_frame`, one output row at a time."""
    pixels = checked_pixels(frame)
    mask = checked_mask(frame, pixels.shape)
    usable = pixels != np.iinfo(pixels.dtype).max
    if mask is not None:
        usable &= mask == 0
    saturation = saturation_threshold(frame)
    bounds = box_bounds(view, pixels.shape[1], pixels.shape[0])
    # Usable pixels as int64, unusable ones as NO_PIXEL, so a plain max skips them.
    candidates = np.where(usable, pixels.astype(np.int64), NO_PIXEL)
    best = np.full((view.height_px, view.width_px), NO_PIXEL, dtype=np.int64)
    for r in range(view.height_px):
        band = candidates[bounds.row_lo[r] : bounds.row_hi[r]]
        if band.shape[0] > 0:
            best[r] = box_max(band.max(axis=0), bounds.col_lo, bounds.col_hi)
    flags = np.full(best.shape, Flags.OK, dtype=np.uint8)
    flags[best >= saturation] = Flags.SATURATED
    flags[best == NO_PIXEL] = Flags.MASKED
    values = cast(PixelArray, np.where(best == NO_PIXEL, 0, best).astype(pixels.dtype))
    rows_read = visited(bounds.row_lo, bounds.row_hi, pixels.shape[0])
    cols_read = visited(bounds.col_lo, bounds.col_hi, pixels.shape[1])
    saturated = (usable & (pixels >= saturation))[np.ix_(rows_read, cols_read)]
    return Reduced(values, flags, int(saturated.sum()), view)


def box_max(
    column_max: npt.NDArray[np.int64], lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """max(column_max[lo[c]:hi[c]]) for every c, NO_PIXEL for an empty box."""
    padded = np.append(column_max, NO_PIXEL)  # lets hi == len(column_max) be an index
    pairs = np.stack([lo, hi], axis=1).ravel()
    # reduceat over [lo, hi, lo, hi, ...] gives the max of each [lo, hi) at even positions.
    result = np.maximum.reduceat(padded, pairs)[::2]
    return np.where(lo < hi, result, NO_PIXEL)


def visited(
    lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64], size: int
) -> npt.NDArray[np.bool_]:
    """Which source indices along one axis any box reads."""
    seen = np.zeros(size, dtype=bool)
    for a, b in zip(lo, hi, strict=True):
        seen[a:b] = True
    return seen


def view_stats_reference(
    reduced: Reduced, beam_center_x_px: float | None, beam_center_y_px: float | None
) -> ViewStats:
    """Same contract as `stats.view_stats`, with NumPy's mean and std per shell."""
    usable = reduced.flags != Flags.MASKED
    values = reduced.values.astype(np.int64)
    has_beam = beam_center_x_px is not None and beam_center_y_px is not None
    if has_beam:
        geometry = shell_geometry(reduced, beam_center_x_px, beam_center_y_px)  # type: ignore[arg-type]
        shell = shell_index(values.shape, geometry)
    else:
        shell = np.zeros(values.shape, dtype=np.int64)
    shells = [moments(values[usable & (shell == s)]) for s in range(N_SHELLS if has_beam else 1)]
    spots = sum(
        int(np.count_nonzero(values[usable & (shell == s)] - m.mean > SPOT_SENSITIVITY * m.rms))
        for s, m in enumerate(shells)
    )
    overall = moments(values[usable])
    return ViewStats.from_overall(
        overall,
        saturated=reduced.saturated_source_px,
        spots=spots if has_beam else None,
        shells=tuple(shells) if has_beam else (),
    )


def shell_index(shape: tuple[int, ...], geometry: ShellGeometry) -> npt.NDArray[np.int64]:
    """Shell of every output pixel, from the squared distance of its centre to the beam."""
    dy = np.arange(shape[0])[:, None] + 0.5 - geometry.beam_y
    dx = np.arange(shape[1])[None, :] + 0.5 - geometry.beam_x
    scaled = (dx * dx + dy * dy - geometry.d2_min) * geometry.shell_scale(N_SHELLS)
    return np.clip(np.floor(scaled), 0, N_SHELLS - 1).astype(np.int64)


def moments(values: npt.NDArray[np.int64]) -> Shell:
    if values.size == 0:
        return Shell(n=0, mean=0.0, rms=0.0, stddev=0.0, min=0, max=0)
    as_float = values.astype(np.float64)
    return Shell(
        n=int(values.size),
        mean=float(as_float.mean()),
        rms=float(np.sqrt(np.mean(as_float * as_float))),
        stddev=float(as_float.std()),
        min=int(values.min()),
        max=int(values.max()),
    )
