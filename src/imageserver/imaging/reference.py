"""Plain NumPy versions of the numba paths (reduction, statistics): slow, obviously right.

The tests require the numba results to equal these exactly; the benchmarks time both. A
reference that called production code could not catch a bug in it, so the geometry (box
bounds, beam centre and shell range) and the saturation rule are worked out here again from
their definitions (docs/architecture.md, legacy-server.md §4 and the docstrings of
`geometry`, `reduce` and `stats`), one box or one pixel at a time. Only constants and the
result containers are shared. The floating-point arithmetic follows the definitions
operation for operation, so equal inputs give bit-equal edges and shells.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import numpy.typing as npt

from imageserver.formats.base import Frame, PixelArray
from imageserver.imaging.geometry import View
from imageserver.imaging.reduce import Flags, Reduced
from imageserver.imaging.stats import MAX_BEAM_PX, N_SHELLS, SPOT_SENSITIVITY, Shell, ViewStats

NO_PIXEL = -1
IndexArray = npt.NDArray[np.int64]


def reduce_frame_reference(frame: Frame, view: View) -> Reduced:
    """Same contract as `reduce.reduce_frame`, one output row at a time."""
    pixels = frame.pixels
    marker = int(np.iinfo(pixels.dtype).max)
    usable = pixels != marker  # the dtype-max marker is a gap or bad pixel
    if frame.mask is not None:
        usable &= frame.mask == 0  # any non-zero mask value is bad
    row_lo, row_hi = box_edges(view.y0_px, view.window_h_px, view.height_px, pixels.shape[0])
    col_lo, col_hi = box_edges(view.x0_px, view.window_w_px, view.width_px, pixels.shape[1])
    # Usable pixels as int64, unusable ones as NO_PIXEL, so a plain max skips them.
    candidates = np.where(usable, pixels.astype(np.int64), NO_PIXEL)
    best = np.full((view.height_px, view.width_px), NO_PIXEL, dtype=np.int64)
    for r in range(view.height_px):
        band = candidates[row_lo[r] : row_hi[r]]
        if band.shape[0] > 0:
            best[r] = box_max(band.max(axis=0), col_lo, col_hi)
    level = saturation_level(frame.meta.saturation_value, marker)
    flags = np.full(best.shape, Flags.OK, dtype=np.uint8)
    flags[best >= level] = Flags.SATURATED
    flags[best == NO_PIXEL] = Flags.MASKED
    values = cast(PixelArray, np.where(best == NO_PIXEL, 0, best).astype(pixels.dtype))
    rows_read = visited(row_lo, row_hi, pixels.shape[0])
    cols_read = visited(col_lo, col_hi, pixels.shape[1])
    saturated = (usable & (candidates >= level))[np.ix_(rows_read, cols_read)]
    return Reduced(values, flags, int(saturated.sum()), view)


def box_edges(
    start_px: float, window_px: float, out_px: int, source_px: int
) -> tuple[IndexArray, IndexArray]:
    """Source rows (or columns) [lo, hi) read by each output pixel along one axis, box by box.

    With s = window / out source pixels per output pixel: when s ≥ 1 (reducing) box c spans
    ⌊start + c·s⌋ .. ⌊start + (c + 1)·s⌋; when s < 1 (magnifying) it is the one source pixel
    under the output pixel's centre, ⌊start + (c + ½)·s⌋. Both ends are then clipped to the
    frame [0, source], which empties a box that lies wholly off it.
    """
    step = window_px / out_px
    lo, hi = [], []
    for c in range(out_px):
        if step >= 1.0:
            first = math.floor(start_px + c * step)
            end = math.floor(start_px + (c + 1) * step)
        else:
            first = math.floor(start_px + (c + 0.5) * step)
            end = first + 1
        lo.append(min(max(first, 0), source_px))
        hi.append(min(max(end, 0), source_px))
    return np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)


def saturation_level(saturation_value: int | None, marker: int) -> int:
    """The lowest value that counts as saturated: the file's saturation value, or without one
    the top real value (one below the dtype-max marker, which is never usable)."""
    return marker - 1 if saturation_value is None else int(saturation_value)


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
    has_beam = all(
        b is not None and math.isfinite(b) and abs(b) < MAX_BEAM_PX
        for b in (beam_center_x_px, beam_center_y_px)
    )
    if has_beam:
        shell = shell_index(reduced, beam_center_x_px, beam_center_y_px)  # type: ignore[arg-type]
    else:
        shell = np.zeros(values.shape, dtype=np.int64)
    shells = [moments(values[usable & (shell == s)]) for s in range(N_SHELLS if has_beam else 1)]
    spots = sum(
        int(np.count_nonzero(values[usable & (shell == s)] - m.mean > SPOT_SENSITIVITY * m.rms))
        for s, m in enumerate(shells)
    )
    return ViewStats.from_overall(
        moments(values[usable]),
        saturated=reduced.saturated_source_px,
        spots=spots if has_beam else None,
        shells=tuple(shells) if has_beam else (),
    )


def beam_on_output(
    reduced: Reduced, beam_center_x_px: float, beam_center_y_px: float
) -> tuple[float, float]:
    """The beam centre in output pixel-edge coordinates.

    A beam given at source pixel centre b sits at source edge coordinate b + ½; the view
    starts at x0 and shows window source pixels on width output pixels.
    """
    view = reduced.view
    height, width = reduced.values.shape
    beam_x = (beam_center_x_px + 0.5 - view.x0_px) * width / view.window_w_px
    beam_y = (beam_center_y_px + 0.5 - view.y0_px) * height / view.window_h_px
    return beam_x, beam_y


def shell_range(beam_x: float, beam_y: float, width: int, height: int) -> tuple[float, float]:
    """(d²min, d²max) from the beam to the output pixel centres (c + ½, r + ½).

    d²max is the farthest centre, found by visiting every one. d²min is the distance to the
    rectangle the centres span, [½, width − ½] × [½, height − ½] (0 when the beam is inside
    it), taken along each axis as how far the beam lies beyond either end.
    """
    dx = np.arange(width) + 0.5 - beam_x
    dy = np.arange(height) + 0.5 - beam_y
    d2_max = float((dx[None, :] * dx[None, :] + dy[:, None] * dy[:, None]).max())
    out_x = max(0.5 - beam_x, 0.0, beam_x - (width - 0.5))
    out_y = max(0.5 - beam_y, 0.0, beam_y - (height - 0.5))
    return out_x * out_x + out_y * out_y, d2_max


def shell_index(
    reduced: Reduced, beam_center_x_px: float, beam_center_y_px: float
) -> npt.NDArray[np.int64]:
    """Shell of every output pixel: N_SHELLS equal steps of d² from d²min to d²max, measured
    at the pixel centre; all in shell 0 when the range is empty, the farthest in the last."""
    height, width = reduced.values.shape
    beam_x, beam_y = beam_on_output(reduced, beam_center_x_px, beam_center_y_px)
    d2_min, d2_max = shell_range(beam_x, beam_y, width, height)
    span = d2_max - d2_min
    per_d2 = N_SHELLS / span if span > 0.0 else 0.0
    dy = np.arange(height)[:, None] + 0.5 - beam_y
    dx = np.arange(width)[None, :] + 0.5 - beam_x
    scaled = (dx * dx + dy * dy - d2_min) * per_d2
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
