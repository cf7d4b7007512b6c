"""Black and white levels, and the mapping of a reduced view to 8-bit colour.

Legacy semantics (legacy-server.md §5.1): the "black" level (``contrast``) and the "white"
level (``wval``) are full-depth pixel values; values at or below white get the map's low
colour, at or above black its high colour, and in between a linear index
``⌊255 · (v − white) / (black − white)⌋`` into the map. Saturated pixels get the map's overload
colour and masked ones (gaps, bad pixels, off the frame) its masked colour.

Automatic levels come from the view's mean ± stddev ("legacy") or from its usable pixels'
percentiles ("percentile"): on a real frame nearly every pixel is faint background and a few
are bright spots, so the mean and stddev sit in the background and the legacy black level
paints most of the image one tone, while the percentiles put white under the background and
black just below the brightest half percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from imageserver.imaging import kernels
from imageserver.imaging.colormaps import get_colormap
from imageserver.imaging.reduce import Reduced, row_blocks
from imageserver.imaging.stats import ViewStats
from imageserver.jit import njit_cached
from imageserver.threads import run_blocks

RgbArray = npt.NDArray[np.uint8]
PlaneArray = npt.NDArray[np.uint8]

MAX_WHITE = 1 << 33
"""A white level beyond any 32-bit value maps every pixel alike, so the kernel gets it clipped
here (without changing any pixel) to keep it exact in float64; the kernel clamps the span."""
LEVEL_MODES = ("legacy", "percentile")
"""How automatic levels are chosen (`choose_levels`)."""
BLACK_PERCENTILE = 99.5
WHITE_PERCENTILE = 10.0
"""Percentile levels: of the view's usable (OK) pixels, as ``np.percentile(method="lower")``."""
DIGIT_BITS = 16
"""Percentiles are counted 16 bits at a time, in histograms of 2¹⁶ bins (`percentile_levels`)."""


@dataclass(frozen=True)
class Levels:
    """The levels actually used, echoed to clients as wval_used and bval_used."""

    white: int
    black: int


def choose_levels(
    stats: ViewStats,
    contrast: int,
    wval: int,
    *,
    mode: str = "legacy",
    reduced: Reduced | None = None,
) -> Levels:
    """Requested levels, automatic ones for the rest, then the legacy clamps.

    black = contrast when > 0, white = wval when ≥ 0. Automatic ones: "legacy" mode
    int(mean ± stddev); "percentile" mode the `BLACK_PERCENTILE` and `WHITE_PERCENTILE` of
    the usable pixels of ``reduced`` (legacy ones when it has none). Then white ≥ 0 and
    black > white.
    """
    if mode not in LEVEL_MODES:
        raise ValueError(f"levels mode must be one of {', '.join(LEVEL_MODES)}, not {mode!r}")
    auto = Levels(white=int(stats.mean - stats.stddev), black=int(stats.mean + stats.stddev))
    if mode == "percentile" and (contrast <= 0 or wval < 0):
        if reduced is None:
            raise ValueError("percentile levels need the reduced view")
        auto = percentile_levels(reduced) or auto
    black = contrast if contrast > 0 else auto.black
    white = wval if wval >= 0 else auto.white
    white = max(white, 0)
    if black <= white:
        black = white + 1
    return Levels(white=white, black=black)


def percentile_levels(reduced: Reduced) -> Levels | None:
    """The percentile levels of the view's usable pixels, unclamped; None when it has none.

    Counted, not sorted (np.partition on a 1024 × 1077 view takes ~11 ms here): one pass
    counts each value below 2¹⁶ and the high 16 bits of the others; a percentile that falls
    among the larger values costs one more pass for the low 16 bits within its bucket.
    """
    values = np.ascontiguousarray(reduced.values)
    flags = np.ascontiguousarray(reduced.flags)
    buckets = 1 << DIGIT_BITS if values.dtype == np.uint32 else 1  # high bits: 0 in uint16
    digits, high = _histograms(values, flags, 0, buckets)
    high[0] = digits.sum()
    cumulative = np.cumsum(high)
    n = int(cumulative[-1])
    if n == 0:
        return None
    within: dict[int, npt.NDArray[np.int64]] = {0: np.cumsum(digits)}
    found = []
    for percentile in (WHITE_PERCENTILE, BLACK_PERCENTILE):
        rank = _rank(n, percentile)
        bucket = _nth(cumulative, rank)
        if bucket not in within:
            within[bucket] = np.cumsum(_histograms(values, flags, bucket, buckets)[0])
        below = int(cumulative[bucket - 1]) if bucket else 0
        found.append(bucket << DIGIT_BITS | _nth(within[bucket], rank - below))
    return Levels(white=found[0], black=found[1])


def _rank(n: int, percentile: float) -> int:
    """0-based rank of the percentile among n sorted values, as numpy's "lower" method."""
    return math.floor((n - 1) * (percentile / 100))


def _nth(cumulative: npt.NDArray[np.int64], rank: int) -> int:
    """The bin holding the value of 0-based ``rank``, given the histogram's running sum."""
    return int(np.searchsorted(cumulative, rank, side="right"))


def _histograms(
    values: npt.NDArray[np.generic], flags: npt.NDArray[np.uint8], bucket: int, buckets: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`_count_usable` over row blocks on the thread pool, the blocks' counts summed."""
    blocks = row_blocks(values.shape[0], values.size)
    digits = np.zeros((len(blocks), 1 << DIGIT_BITS), np.int64)
    high = np.zeros((len(blocks), buckets), np.int64)
    block_of = {start: index for index, (start, _) in enumerate(blocks)}

    def count_rows(start: int, stop: int) -> None:
        index = block_of[start]
        _count_usable(values[start:stop], flags[start:stop], bucket, digits[index], high[index])

    run_blocks(count_rows, blocks)
    return digits.sum(axis=0), high.sum(axis=0)


@njit_cached(
    [
        numba.void(
            kernels.readonly(pixel, 2),
            kernels.readonly(kernels.u8, 2),
            kernels.i8,
            kernels.writable(kernels.i8),
            kernels.writable(kernels.i8),
        )
        for pixel in kernels.PIXEL_TYPES
    ]
)
def _count_usable(values, flags, bucket, digits, high):
    """For each OK value: digits[low 16 bits] += 1 if its high bits are ``bucket``, else
    high[high bits] += 1. Four interleaved copies of ``digits`` would break the chain of
    increments to one bin, but measured no faster than this."""
    wanted = np.uint64(bucket)  # unsigned like the values: numba compares mixed ones as floats
    for r in range(values.shape[0]):
        values_row, flags_row = values[r], flags[r]
        for c in range(values.shape[1]):
            if flags_row[c] == kernels.OK:
                value = np.uint64(values_row[c])
                top = value >> np.uint64(16)
                if top == wanted:
                    digits[value & np.uint64(0xFFFF)] += 1
                else:
                    high[top] += 1


def map_contrast(reduced: Reduced, levels: Levels, colormap: str = "grey") -> RgbArray:
    """The view as (h, w, 3) uint8 RGB (for PNG); RequestError for an unknown colormap."""
    planes = map_contrast_planes(reduced, levels, colormap, space="rgb")
    return np.ascontiguousarray(np.moveaxis(planes, 0, -1))


def map_contrast_planes(
    reduced: Reduced,
    levels: Levels,
    colormap: str = "grey",
    *,
    space: str = "ycc",
    top_rows: int = 0,
) -> PlaneArray:
    """The view as (3, top_rows + h, w) uint8 channel planes, RGB or JFIF YCbCr.

    YCbCr planes go to the JPEG encoder as they are, which saves its colour conversion (a
    third of a 1024-wide encode). The ``top_rows`` rows above the image are left unset, for
    a banner.
    """
    cmap = get_colormap(colormap)
    palette = cmap.ycc_palette if space == "ycc" else cmap.rgb_palette
    white = min(max(levels.white, 0), MAX_WHITE)
    black = min(max(levels.black, white + 1), white + kernels.MAX_SPAN)
    values = np.ascontiguousarray(reduced.values)
    flags = np.ascontiguousarray(reduced.flags)
    out = np.empty((3, top_rows + values.shape[0], values.shape[1]), np.uint8)

    def map_rows(start: int, stop: int) -> None:
        kernels.map_to_planes(values, flags, white, black, palette, start, stop, top_rows, out)

    run_blocks(map_rows, row_blocks(values.shape[0], values.size))
    return out


def warm_up() -> None:
    """Call the counting kernel once per pixel type (see `reduce.warm_up`: the first call's
    setup is paid in the zygote, not in each new worker)."""
    for dtype in (np.uint16, np.uint32):
        one = np.zeros((1, 1), dtype=dtype)
        digits, high = np.zeros(1 << 16, np.int64), np.zeros(1 << 16, np.int64)
        _count_usable(one, np.zeros((1, 1), np.uint8), 0, digits, high)
