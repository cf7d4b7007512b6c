"""Plain NumPy (and pure Python for the components) versions of the spot finder's numba path.

The tests require `spotfinder` to equal these exactly. They follow DIALS's definitions
directly: window sums from a summed-area table (exact int64), the erosion as a Chebyshev
distance found by dilating the background, components by flood fill, so a shared mistake
would need two different algorithms to make it. Only the parameter and result containers
are shared.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from imageserver.formats.base import Frame
from imageserver.imaging.spotfinder import SpotFinderParams, Spots

BIG = 1 << 24
IntImage = npt.NDArray[np.int64]
BoolImage = npt.NDArray[np.bool_]


def clean_reference(frame: Frame) -> npt.NDArray[np.int32]:
    """Usable counts (not masked, not the marker, below the overload), -1 elsewhere."""
    pixels = frame.pixels.astype(np.int64)
    top = int(np.iinfo(frame.pixels.dtype).max)
    overload = top - 1 if frame.meta.saturation_value is None else frame.meta.saturation_value
    usable = (pixels != top) & (pixels < min(max(overload, 0), top))
    if frame.mask is not None:
        usable &= frame.mask == 0
    return np.where(usable, np.minimum(pixels, (1 << 31) - 1), -1).astype(np.int32)


def window_sums(values: IntImage, half: int) -> IntImage:
    """Sum over the (2·half+1)² window clipped to the image, from a summed-area table."""
    height, width = values.shape
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    rows, cols = np.arange(height), np.arange(width)
    r0, r1 = np.maximum(rows - half, 0), np.minimum(rows + half + 1, height)
    c0, c1 = np.maximum(cols - half, 0), np.minimum(cols + half + 1, width)
    return (
        table[np.ix_(r1, c1)]
        - table[np.ix_(r0, c1)]
        - table[np.ix_(r1, c0)]
        + table[np.ix_(r0, c0)]
    )


def dispersion_test(clean: npt.NDArray[np.int32], p: SpotFinderParams, extended: bool) -> BoolImage:
    """DIALS's first test: (non-background or strong map, as booleans)."""
    value = clean.astype(np.int64)
    in_sum = (value >= 0) & (value < BIG)
    m = window_sums(in_sum.astype(np.int64), p.kernel_size_px)
    x = window_sums(np.where(in_sum, value, 0), p.kernel_size_px)
    y = window_sums(np.where(in_sum, value * value, 0), p.kernel_size_px)
    fm, fx, fy = m.astype(np.float64), x.astype(np.float64), y.astype(np.float64)
    root = np.sqrt(np.maximum(2.0 * (fm - 1.0), 0.0))
    with np.errstate(invalid="ignore"):
        if p.gain == 1.0:
            a = fm * fy - fx * fx - fx * (fm - 1)
            c = fx * p.sigma_background * root
            d = p.sigma_strong * np.sqrt(fx * fm)
        else:
            a = fm * fy - fx * fx
            c = p.gain * fx * (fm - 1 + p.sigma_background * root)
            d = p.sigma_strong * np.sqrt(p.gain * fx * fm)
    ok = (value >= 0) & (m >= p.min_local) & (x >= 0)
    if extended:
        return ok & (a > c)
    b = fm * value - fx
    return ok & (value > p.global_threshold) & (a > c) & (b > d)


def chebyshev_distance_at_least(background: BoolImage, distance: int) -> BoolImage:
    """Pixels whose Chebyshev distance to the nearest background pixel of the image is at
    least ``distance`` (outside the image is not background)."""
    near = background.copy()
    for _ in range(distance - 1):
        grown = np.pad(near, 1)
        near = np.zeros_like(near)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                near |= grown[dy : dy + near.shape[0], dx : dx + near.shape[1]]
    return ~near


def strong_reference(clean: npt.NDArray[np.int32], p: SpotFinderParams) -> BoolImage:
    """The strong-pixel map of ``p.algorithm``."""
    if p.algorithm == "dispersion":
        return dispersion_test(clean, p, extended=False)
    value = clean.astype(np.int64)
    usable = value >= 0
    not_background = dispersion_test(clean, p, extended=True)
    core = usable & not_background & chebyshev_distance_at_least(~not_background, p.kernel_size_px)
    background = usable & ~core & (value < BIG)
    m = window_sums(background.astype(np.int64), p.kernel_size_px + 2)
    x = window_sums(np.where(background, value, 0), p.kernel_size_px + 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(m >= 2, x.astype(np.float64) / m, 0.0)
    if p.gain == 1.0:
        bound = mean + p.sigma_strong * np.sqrt(mean)
    else:
        bound = mean + p.sigma_strong * np.sqrt(p.gain * mean)
    return core & (value > p.global_threshold) & (value >= bound)


def spots_reference(frame: Frame, p: SpotFinderParams | None = None) -> Spots:
    """Same contract as `spotfinder.find_spots` without a resolution range."""
    p = p or SpotFinderParams()
    clean = clean_reference(frame)
    strong = strong_reference(clean, p)
    n_strong = int(strong.sum())
    if n_strong > math.ceil(p.max_strong_pixel_fraction * strong.size):
        raise ValueError("too many strong pixels")
    spots = []
    seen = np.zeros(strong.shape, dtype=bool)
    for j, i in zip(*np.nonzero(strong), strict=True):  # raster order: DIALS's label order
        if seen[j, i]:
            continue
        pixels, todo = [], [(int(j), int(i))]
        seen[j, i] = True
        while todo:
            y, x = todo.pop()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                inside = 0 <= ny < strong.shape[0] and 0 <= nx < strong.shape[1]
                if inside and strong[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    todo.append((ny, nx))
        pixels.sort()
        counts = [int(clean[y, x]) for y, x in pixels]
        total = sum(counts)
        peak = pixels[counts.index(max(counts))]
        spots.append(
            (
                sum(v * x for v, (_, x) in zip(counts, pixels, strict=True)) / total,
                sum(v * y for v, (y, _) in zip(counts, pixels, strict=True)) / total,
                float(total), len(pixels), peak[1], peak[0],
            )
        )  # fmt: skip
    kept = [
        s for s in spots
        if p.min_spot_size_px <= s[3] <= p.max_spot_size_px
        and math.hypot(s[4] - s[0], s[5] - s[1]) <= p.max_separation_px
    ]  # fmt: skip
    columns = list(zip(*kept, strict=True)) if kept else [()] * 6
    return Spots(
        np.array(columns[0], dtype=np.float64), np.array(columns[1], dtype=np.float64),
        np.array(columns[2], dtype=np.float64), np.array(columns[3], dtype=np.int64),
        np.array(columns[4], dtype=np.int64), np.array(columns[5], dtype=np.int64), n_strong,
    )  # fmt: skip
