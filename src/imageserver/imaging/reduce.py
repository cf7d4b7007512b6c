"""Full-depth reduction of a frame to a view: max-pooling that keeps bad and saturated pixels apart.

This is the costly step of a JPEG request (legacy-server.md §4), so its result is what gets
cached; 8-bit mapping happens later per request. The numba loops are in `kernels`; this module
owns the policy: which pixels are usable (not masked, not the dtype-max marker), the saturation
threshold, the output dtypes, and the split of large views into row blocks over a thread pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from imageserver.errors import CorruptFrameError
from imageserver.formats.base import (
    STRIP_ELEMENTS,
    AnyFrame,
    EncodedFrame,
    Frame,
    MaskArray,
    PixelArray,
)
from imageserver.imaging import kernels
from imageserver.imaging.geometry import BoxBounds, View, box_bounds
from imageserver.threads import THREADS, run_blocks

MIN_PARALLEL_PX = 1 << 18
"""Below this many pixels to visit, one thread beats handing out blocks (~0.1 ms overhead)."""

FlagArray = npt.NDArray[np.uint8]
RowSource = Callable[[int, int], PixelArray]
"""rows(first, stop): source rows [first, stop) as a C-contiguous 2-D array."""


class Flags:
    """Per-output-pixel state, stored as uint8 beside the values."""

    OK = np.uint8(kernels.OK)
    MASKED = np.uint8(kernels.MASKED)
    """No usable source pixel: gaps, bad pixels, or a box off the frame. The value is 0."""
    SATURATED = np.uint8(kernels.SATURATED)
    """A usable source pixel reached saturation; the value is still the true maximum."""


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class Reduced:
    """A view at full bit depth: values in the source dtype, flags, and what it shows."""

    values: PixelArray
    flags: FlagArray
    saturated_source_px: int
    view: View


def reduce_frame(
    frame: AnyFrame,
    view: View,
    *,
    strip_elements: int = STRIP_ELEMENTS,
    rows: RowSource | None = None,
) -> Reduced:
    """Max-pool the frame into the view's output grid (see `geometry.box_bounds`).

    An `EncodedFrame` is decoded a strip of source rows at a time and each strip folded into
    the view at once, only the rows the view shows: no whole-frame array is ever made.
    ``rows`` may supply its strips instead of its own `EncodedFrame.rows` (decoded rows the
    caller keeps, see `cache.renderer`).
    """
    if isinstance(frame, EncodedFrame):
        return _reduce_encoded(frame, view, strip_elements, rows or frame.rows)
    pixels = checked_pixels(frame)
    mask = checked_mask(frame, pixels.shape)
    return _reduce_rows(
        lambda first, stop: pixels[first:stop], pixels.shape, pixels.dtype, mask, frame, view
    )


def _reduce_encoded(
    frame: EncodedFrame, view: View, strip_elements: int, rows: RowSource
) -> Reduced:
    shape = frame.shape
    _check_pixel_layout(frame, frame.dtype, shape)
    mask = checked_mask(frame, shape)
    strip_rows = max(1, strip_elements // shape[1])
    return _reduce_rows(rows, shape, frame.dtype, mask, frame, view, strip_rows)


def _reduce_rows(
    rows: RowSource,
    shape: tuple[int, ...],
    dtype: np.dtype,
    mask: MaskArray | None,
    frame: AnyFrame,
    view: View,
    strip_rows: int | None = None,
) -> Reduced:
    """The pooling of `reduce_frame` over source rows that ``rows(first, stop)`` supplies.

    Output rows are shared out among threads; each thread asks for the source rows of a few
    output rows at a time (about ``strip_rows``; all of them at once when None), so a strip
    is folded while it is still in the processor's cache.
    """
    bounds = box_bounds(view, shape[1], shape[0])
    count_lo = first_counted_rows(bounds)
    saturation = saturation_threshold(dtype, frame.meta.saturation_value)
    values = np.empty((view.height_px, view.width_px), dtype=dtype)
    flags = np.empty((view.height_px, view.width_px), dtype=np.uint8)
    saturated_per_row = np.empty(view.height_px, dtype=np.int64)
    has_mask = mask is not None
    no_mask = np.zeros((1, 1), dtype=np.uint8)
    row_lo, row_hi = bounds.row_lo, bounds.row_hi

    def pool_rows(start: int, stop: int) -> None:
        while start < stop:
            end = _strip_end(row_lo, row_hi, start, stop, strip_rows)
            first, last = int(row_lo[start]), int(row_hi[end - 1])
            out = slice(start, end)
            kernels.max_pool_2d(
                rows(first, last), no_mask if mask is None else mask[first:last], has_mask,
                row_lo[out] - first, row_hi[out] - first, count_lo[out] - first,
                bounds.col_lo, bounds.col_hi, saturation,
                values[out], flags[out], saturated_per_row[out],
            )  # fmt: skip
            start = end

    rows_read = int(row_hi[-1] - row_lo[0])
    cols_read = int(bounds.col_hi[-1] - bounds.col_lo[0])
    work_px = max(rows_read * cols_read, values.size)
    run_blocks(pool_rows, row_blocks(view.height_px, work_px))
    return Reduced(values, flags, int(saturated_per_row.sum()), view)


def _strip_end(
    row_lo: np.ndarray, row_hi: np.ndarray, start: int, stop: int, strip_rows: int | None
) -> int:
    """The end of the run of output rows from ``start`` whose boxes lie within one aligned
    strip of ``strip_rows`` source rows (at least one output row, whatever its box), so that
    a source of aligned bands (`cache.renderer`) hands out one band, uncopied."""
    if strip_rows is None:
        return stop
    limit = (row_lo[start] // strip_rows + 1) * strip_rows
    end = start + int(np.searchsorted(row_hi[start:stop], limit, side="right"))
    return max(end, start + 1)


def saturation_threshold(dtype: np.dtype, value: int | None) -> int:
    """The file's saturation value, else one below the marker: the top real value saturates."""
    top = int(np.iinfo(dtype).max)
    return top - 1 if value is None else min(max(int(value), 0), top)


def first_counted_rows(bounds: BoxBounds) -> npt.NDArray[np.int64]:
    """For each output row, the first source row whose saturated pixels it counts.

    Magnified rows share source rows; counting from the previous row's end keeps every
    source pixel counted once.
    """
    previous_hi = np.concatenate(([0], bounds.row_hi[:-1]))
    return np.maximum(bounds.row_lo, previous_hi)


def checked_pixels(frame: Frame) -> PixelArray:
    pixels = frame.pixels
    _check_pixel_layout(frame, pixels.dtype, pixels.shape)
    return cast(PixelArray, np.ascontiguousarray(pixels))


def _check_pixel_layout(frame: AnyFrame, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if len(shape) != 2 or dtype not in (np.uint16, np.uint32) or 0 in shape:
        raise CorruptFrameError(
            f"{frame.path} frame {frame.number}: pixels are {dtype} {shape},"
            " expected a non-empty 2-D uint16 or uint32 image"
        )


def checked_mask(frame: AnyFrame, shape: tuple[int, ...]) -> MaskArray | None:
    mask = frame.mask
    if mask is None:
        return None
    if mask.shape != shape:
        raise CorruptFrameError(
            f"{frame.path}: pixel mask is {mask.shape[::-1]} but the frame is {shape[::-1]}"
        )
    if mask.dtype != np.uint8 or not mask.flags.c_contiguous:
        return np.ascontiguousarray(mask != 0).view(np.uint8)
    return mask


def row_blocks(n_rows: int, work_px: int) -> list[tuple[int, int]]:
    """Split output rows into one block per thread when the job is large, else one block."""
    n_blocks = min(THREADS, n_rows) if work_px >= MIN_PARALLEL_PX else 1
    edges = np.linspace(0, n_rows, max(n_blocks, 1) + 1).astype(int).tolist()
    return list(itertools.pairwise(edges))


def warm_up() -> None:
    """Run every kernel specialisation once on tiny arrays.

    Importing `kernels` compiles each signature or loads it from numba's disk cache (about
    5 s cold, 0.2 s warm; where the cache lives is explained in `kernels._jit`); this first
    call then does the remaining per-function setup (a few ms), so that a worker forked after
    it serves its first request as fast as later ones. It starts no threads.
    """
    mask = np.zeros((2, 2), dtype=np.uint8)
    lo, hi = np.array([0], dtype=np.int64), np.array([2], dtype=np.int64)
    palette = np.zeros(258, dtype=np.uint32)
    for dtype in (np.uint16, np.uint32):
        values = np.zeros((1, 1), dtype=dtype)
        flags = np.zeros((1, 1), dtype=np.uint8)
        for has_mask in (False, True):
            kernels.max_pool_2d(
                np.zeros((2, 2), dtype=dtype), mask, has_mask, lo, hi, lo, lo, hi, 1,
                values, flags, np.zeros(1, dtype=np.int64),
            )  # fmt: skip
        kernels.map_to_planes(values, flags, 0, 1, palette, 0, 1, 0, np.zeros((3, 1, 1), np.uint8))
        ints, floats = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64)
        kernels.shell_moments(
            values, flags, 0, 0.0, 0.0, 0.0, 1.0, flags.copy(), ints, ints, floats, ints, ints
        )
        kernels.shell_deviations(values, flags, flags.copy(), floats, floats, floats, ints)
