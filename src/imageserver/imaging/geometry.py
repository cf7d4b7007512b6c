"""Which part of the detector a view shows, and which source pixels feed each output pixel.

Coordinates here are pixel *edges*: source column ``x`` spans ``[x, x + 1)``, and the window
starts at ``x0_px``. The legacy server's geometry (legacy-server.md §4.1) is kept, with two
bugs fixed: the output keeps the detector's aspect ratio (B1; legacy output was always square)
and edge tiles never read outside the frame (B10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError, RequestError

MIN_SIZE_PX = 8
"""Smaller sizes are raised to this (legacy clamp); the upper bounds are `LimitSettings`."""
MAX_SEGMENT = 1e6
"""Segments farther off the image are refused: they could only ever show blank."""

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class View:
    """The output size and the source window it shows, in source pixels (floats)."""

    width_px: int
    height_px: int
    x0_px: float
    y0_px: float
    window_w_px: float
    window_h_px: float
    zoom: float
    segcol: float
    segrow: float


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class BoxBounds:
    """Output pixel (r, c) reads rows [row_lo[r], row_hi[r]) × cols [col_lo[c], col_hi[c])."""

    row_lo: IndexArray
    row_hi: IndexArray
    col_lo: IndexArray
    col_hi: IndexArray


def plan_view(
    source_w_px: int,
    source_h_px: int,
    *,
    xsize: int,
    ysize: int | None = None,
    zoom: float = 1.0,
    segcol: float = 0.0,
    segrow: float = 0.0,
    limits: LimitSettings = DEFAULT_LIMITS,
) -> View:
    """Turn the legacy request geometry into a view; RequestError for values out of range.

    Zoom is rounded to 0.1 as the legacy server did; at zoom Z each axis is cut into ⌈Z⌉
    segments and (segcol, segrow) picks one (fractional and off-image segments are allowed).
    ``limits`` is the same `LimitSettings` the request parser used, so whatever the
    configuration lets through the parser is planned here too: ``max_xsize_px`` bounds the
    width, an explicit ``ysize`` and the height derived from the aspect ratio; ``max_zoom``
    bounds the zoom.
    """
    if source_w_px < 1 or source_h_px < 1:
        raise CorruptFrameError(
            f"the frame is {source_w_px} × {source_h_px} pixels: nothing to show"
        )
    for name, value in (("zoom", zoom), ("segcol", segcol), ("segrow", segrow)):
        if not math.isfinite(value):
            raise RequestError(f"{name} must be a finite number, not {value!r}")
    for name, value in (("segcol", segcol), ("segrow", segrow)):
        if abs(value) > MAX_SEGMENT:
            raise RequestError(
                f"{name} {value:g} is more than {MAX_SEGMENT:g} segments off the image"
            )
    # Rounding 10·zoom would overflow to ±inf near ±1e308: refuse or clamp before it.
    if zoom > limits.max_zoom + 1.0:
        raise _above_zoom_limit(zoom, limits)
    zoom = math.floor(10.0 * zoom + 0.5) / 10.0 if zoom > 1.0 else 1.0
    if zoom > limits.max_zoom:
        raise _above_zoom_limit(zoom, limits)
    if zoom <= 1.0:
        zoom, segcol, segrow = 1.0, 0.0, 0.0
    max_px = limits.max_xsize_px
    width_px = max(int(xsize), MIN_SIZE_PX)
    if width_px > max_px:
        raise RequestError(
            f"xsize {xsize} is above the limit of {max_px} pixels ([limits] max_xsize_px)"
        )
    window_w_px = source_w_px / zoom
    window_h_px = source_h_px / zoom
    if ysize is None:
        height_px = max(1, round(width_px * window_h_px / window_w_px))
        if height_px > max_px:
            raise RequestError(
                f"xsize {width_px} on a {source_w_px} × {source_h_px} frame gives an image"
                f" {height_px} pixels high, above the limit of {max_px} ([limits]"
                " max_xsize_px bounds the height too); ask for a smaller xsize or a ysize"
            )
    elif not MIN_SIZE_PX <= ysize <= max_px:
        raise RequestError(
            f"ysize {ysize} is outside {MIN_SIZE_PX}..{max_px} pixels ([limits] max_xsize_px)"
        )
    else:
        height_px = int(ysize)
    return View(
        width_px=width_px,
        height_px=height_px,
        x0_px=window_w_px * segcol,
        y0_px=window_h_px * segrow,
        window_w_px=window_w_px,
        window_h_px=window_h_px,
        zoom=zoom,
        segcol=segcol,
        segrow=segrow,
    )


def _above_zoom_limit(zoom: float, limits: LimitSettings) -> RequestError:
    return RequestError(
        f"zoom {zoom:g} is above the limit of {limits.max_zoom:g} ([limits] max_zoom)"
    )


def box_bounds(view: View, source_w_px: int, source_h_px: int) -> BoxBounds:
    """Source boxes of every output row and column, clipped to the frame."""
    row_lo, row_hi = axis_bounds(view.y0_px, view.window_h_px, view.height_px, source_h_px)
    col_lo, col_hi = axis_bounds(view.x0_px, view.window_w_px, view.width_px, source_w_px)
    return BoxBounds(row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi)


def axis_bounds(
    start_px: float, window_px: float, out_px: int, source_px: int
) -> tuple[IndexArray, IndexArray]:
    """Box edges along one axis: boxes tile the window when reducing; one pixel when magnifying.

    Reducing (a step of at least one source pixel), box c is [⌊start + c·s⌋, ⌊start + (c+1)·s⌋),
    so neighbouring boxes share an edge and every window pixel is read exactly once.
    Magnifying, box c is the one pixel under the output pixel's centre (nearest neighbour).
    Boxes are then clipped to [0, source_px]; a box wholly off the frame becomes empty.
    """
    step = window_px / out_px
    if step >= 1.0:
        edges = np.floor(start_px + np.arange(out_px + 1, dtype=np.float64) * step)
        lo, hi = edges[:-1], edges[1:]
    else:
        lo = np.floor(start_px + (np.arange(out_px, dtype=np.float64) + 0.5) * step)
        hi = lo + 1.0
    lo = np.clip(lo, 0, source_px).astype(np.int64)
    hi = np.clip(hi, 0, source_px).astype(np.int64)
    return lo, hi
