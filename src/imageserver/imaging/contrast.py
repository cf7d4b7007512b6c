"""Black and white levels, and the mapping of a reduced view to 8-bit colour.

Legacy semantics (legacy-server.md §5.1): the "black" level (``contrast``) and the "white"
level (``wval``) are full-depth pixel values; values at or below white get the map's low
colour, at or above black its high colour, and in between a linear index
``⌊255 · (v − white) / (black − white)⌋`` into the map. Saturated pixels get the map's overload
colour and masked ones (gaps, bad pixels, off the frame) its masked colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imageserver.imaging import kernels
from imageserver.imaging.colormaps import get_colormap
from imageserver.imaging.reduce import Reduced, row_blocks
from imageserver.imaging.stats import ViewStats
from imageserver.threads import run_blocks

RgbArray = npt.NDArray[np.uint8]
PlaneArray = npt.NDArray[np.uint8]

MAX_WHITE = 1 << 33
"""A white level beyond any 32-bit value maps every pixel alike, so the kernel gets it clipped
here (without changing any pixel) to keep it exact in float64; the kernel clamps the span."""


@dataclass(frozen=True)
class Levels:
    """The levels actually used, echoed to clients as wval_used and bval_used."""

    white: int
    black: int


def choose_levels(stats: ViewStats, contrast: int, wval: int) -> Levels:
    """Requested levels, automatic ones from the view's mean ± stddev, then the legacy clamps.

    black = contrast, or int(mean + stddev) when contrast ≤ 0; white = wval, or
    int(mean − stddev) when wval < 0; white ≥ 0; black > white.
    """
    black = contrast if contrast > 0 else int(stats.mean + stats.stddev)
    white = wval if wval >= 0 else int(stats.mean - stats.stddev)
    white = max(white, 0)
    if black <= white:
        black = white + 1
    return Levels(white=white, black=black)


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
