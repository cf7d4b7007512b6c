"""Numba loops of the spot finder: plain loops over the rows they are given, writing into `out`.

Policy (which pixels are usable, DIALS's parameters, threads, filters) lives in `spotfinder`;
the reference these must equal exactly is `spotfinder_reference`. A *clean* image is int32:
a usable pixel's count, or -1 for a pixel that is masked, a gap marker, at or above the
detector's overload, or outside the requested resolution range.

Window sums are exact int64 running sums (a column sum per window of rows, slid along each
row), which is what DIALS's summed-area table gives for integer counts; every comparison is
then done in float64 operation for operation as DIALS writes it (dials
algorithms/image/threshold/local.h), so equal sums give equal decisions.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from imageserver.imaging.kernels import readonly, writable
from imageserver.jit import njit_cached as _jit

BIG = 1 << 24
"""DIALS leaves counts from 2^24 up out of its window sums (they would swamp the doubles)."""
INT32_MAX = (1 << 31) - 1

u1, i4, i8, f8, boolean = numba.uint8, numba.int32, numba.int64, numba.float64, numba.boolean


_CLEAN_ARGS = (readonly(u1, 2), boolean, i8, i8, f8, f8, f8, f8, f8, f8, writable(i4, 2))


@_jit([numba.void(readonly(p, 2), *_CLEAN_ARGS) for p in (numba.uint16, numba.uint32)])
def clean_rows(
    pixels, mask, has_mask, saturation, row0, beam_x, beam_y, psx, psy, r2_lo, r2_hi, out
):
    """out = the count of each usable pixel of rows row0… (clamped to int32), else -1.

    Usable: not masked, not the dtype-max marker, below ``saturation``, and with its centre
    (pixel edge coordinates, +0.5) at a squared distance from the beam, in metres², strictly
    between r2_lo and r2_hi (DIALS masks its resolution limits inclusively).
    """
    marker = np.iinfo(pixels.dtype).max
    check_radius = r2_lo >= 0.0 or r2_hi < math.inf
    for r in range(pixels.shape[0]):
        dy = (row0 + r + 0.5 - beam_y) * psy
        for c in range(pixels.shape[1]):
            v = pixels[r, c]
            usable = v != marker and np.int64(v) < saturation
            if has_mask and mask[r, c] != 0:
                usable = False
            if usable and check_radius:
                dx = (c + 0.5 - beam_x) * psx
                r2 = dx * dx + dy * dy
                usable = r2_lo < r2 < r2_hi
            out[r, c] = min(np.int64(v), INT32_MAX) if usable else -1


@_jit(None, inline="always")
def _add_row(row, sign, col_m, col_x, col_y):
    """Add (sign 1) or remove (sign -1) one row's in-sum pixels to the column sums."""
    for c in range(row.shape[0]):
        v = np.int64(row[c])
        if 0 <= v < BIG:
            col_m[c] += sign
            col_x[c] += sign * v
            col_y[c] += sign * v * v


@_jit([numba.int64(readonly(i4, 2), i8, i8, i8, i8, f8, f8, f8, f8, boolean, writable(u1, 2))])
def dispersion_rows(clean, row_start, row_stop, half, min_local, nsig_b, nsig_s, gain,
                    threshold, extended, out):  # fmt: skip
    """DIALS's dispersion test over a (2·half+1)² window for rows [row_start, row_stop).

    ``extended`` False: out = strong pixels of the plain dispersion algorithm. True: out =
    the first pass of dispersion_extended, the usable pixels that are *not* background
    (DIALS 3.12 counts masked pixels as background here, so they stop the erosion).
    Returns the number of ones written. ``out`` holds rows [row_start, row_stop).
    """
    height, width = clean.shape
    col_m = np.zeros(width, dtype=np.int64)
    col_x = np.zeros(width, dtype=np.int64)
    col_y = np.zeros(width, dtype=np.int64)
    for r in range(max(0, row_start - half), min(height, row_start + half + 1)):
        _add_row(clean[r], 1, col_m, col_x, col_y)
    sqrt_tab = np.empty((2 * half + 1) ** 2 + 1, dtype=np.float64)
    for m in range(sqrt_tab.shape[0]):
        sqrt_tab[m] = math.sqrt(2.0 * (m - 1.0)) if m >= 1 else 0.0
    unit_gain = gain == 1.0
    count = 0
    for j in range(row_start, row_stop):
        if j > row_start:
            if j + half < height:
                _add_row(clean[j + half], 1, col_m, col_x, col_y)
            if j - half - 1 >= 0:
                _add_row(clean[j - half - 1], -1, col_m, col_x, col_y)
        src = clean[j]
        dst = out[j - row_start]
        m = np.int64(0)
        x = np.int64(0)
        y = np.int64(0)
        for i in range(min(half, width)):
            m += col_m[i]
            x += col_x[i]
            y += col_y[i]
        for i in range(width):
            if i + half < width:
                m += col_m[i + half]
                x += col_x[i + half]
                y += col_y[i + half]
            if i - half - 1 >= 0:
                m -= col_m[i - half - 1]
                x -= col_x[i - half - 1]
                y -= col_y[i - half - 1]
            v = src[i]
            result = False
            if v >= 0 and m >= min_local and x >= 0 and (extended or v > threshold):
                fm, fx, fy = float(m), float(x), float(y)
                if unit_gain:
                    a = fm * fy - fx * fx - fx * (fm - 1)
                    c = fx * nsig_b * sqrt_tab[m]
                else:
                    a = fm * fy - fx * fx
                    c = gain * fx * (fm - 1 + nsig_b * sqrt_tab[m])
                result = a > c
                if result and not extended:
                    b = fm * v - fx
                    if unit_gain:
                        d = nsig_s * math.sqrt(fx * fm)
                    else:
                        d = nsig_s * math.sqrt(gain * fx * fm)
                    result = b > d
            dst[i] = 1 if result else 0
            count += 1 if result else 0
    return count


@_jit([numba.void(readonly(i4, 2), readonly(u1, 2), i8, i8, i8, writable(u1, 2))])
def core_rows(clean, not_background, row_start, row_stop, radius, out):
    """The erosion of dispersion_extended: usable non-background pixels with no background
    pixel of the image within Chebyshev distance ``radius`` (DIALS: distance ≥ kernel size).

    These are the pixels DIALS leaves out of the second pass's background; only they can be
    strong. ``out`` holds rows [row_start, row_stop).
    """
    height, width = clean.shape
    for j in range(row_start, row_stop):
        dst = out[j - row_start]
        for i in range(width):
            core = clean[j, i] >= 0 and not_background[j, i] != 0
            if core:
                for jj in range(max(0, j - radius), min(height, j + radius + 1)):
                    for ii in range(max(0, i - radius), min(width, i + radius + 1)):
                        if not_background[jj, ii] == 0:
                            core = False
            dst[i] = 1 if core else 0


@_jit([numba.int64(readonly(i4, 2), readonly(u1, 2), i8, i8, i8, f8, f8, f8, writable(u1, 2))])
def extended_final_rows(clean, core, row_start, row_stop, half, nsig_s, gain, threshold, out):
    """Second pass of dispersion_extended: a core pixel is strong when above the global
    threshold and at least mean + nsig_s·√(gain·mean), the mean taken over the background
    pixels (usable, not core, below 2^24) of its (2·half+1)² window (0 when fewer than 2).

    Only core pixels are visited, so the pass costs a window per candidate instead of a
    dense sweep. Returns the number of strong pixels; ``out`` holds rows [row_start, row_stop).
    """
    height, width = clean.shape
    count = 0
    for j in range(row_start, row_stop):
        dst = out[j - row_start]
        for i in range(width):
            strong = False
            if core[j, i] != 0:
                v = clean[j, i]
                m = np.int64(0)
                x = np.int64(0)
                for jj in range(max(0, j - half), min(height, j + half + 1)):
                    for ii in range(max(0, i - half), min(width, i + half + 1)):
                        w = np.int64(clean[jj, ii])
                        if 0 <= w < BIG and core[jj, ii] == 0:
                            m += 1
                            x += w
                fm, fx = float(m), float(x)
                mean = fx / fm if m >= 2 else 0.0
                if gain == 1.0:
                    bound = mean + nsig_s * math.sqrt(mean)
                else:
                    bound = mean + nsig_s * math.sqrt(gain * mean)
                strong = v > threshold and v >= bound
            dst[i] = 1 if strong else 0
            count += 1 if strong else 0
    return count


@_jit(None, inline="always")
def _find(parent, i):
    """Root of i's set, halving the path on the way (as DIALS's DisjointSets does)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@_jit(None, inline="always")
def _join(parent, a, b):
    """Join the sets of a and b, keeping the lower root: sets are then numbered by their
    first pixel in raster order, as DIALS numbers its labels."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@_jit([numba.int64(readonly(u1, 2), readonly(i4, 2), *(writable(i8),) * 5)])
def label_pixels(strong, clean, rows, cols, values, labels, parent):
    """4-connected components of the strong pixels, labelled 0… by first pixel in raster
    order (DIALS's LabelImageStack: edges to the left and upper neighbours only).

    Arrays are sized to the number of strong pixels; fills rows, cols, values (counts) and
    labels per strong pixel in raster order and returns the number of labels.
    """
    height, width = strong.shape
    above = np.zeros(width, dtype=np.int64)  # vertex + 1 of the strong pixel above, else 0
    n = 0
    for j in range(height):
        for i in range(width):
            if strong[j, i] != 0:
                parent[n] = n
                rows[n] = j
                cols[n] = i
                values[n] = clean[j, i]
                if i > 0 and strong[j, i - 1] != 0:
                    _join(parent, n, n - 1)
                if j > 0 and strong[j - 1, i] != 0:
                    _join(parent, n, above[i] - 1)
                above[i] = n + 1
                n += 1
            else:
                above[i] = 0
    n_labels = 0
    for k in range(n):
        if parent[k] == k:
            labels[k] = n_labels
            n_labels += 1
        else:
            labels[k] = labels[parent[k]]
    return n_labels


@_jit([numba.void(*(readonly(i8),) * 4, *(writable(i8),) * 7)])
def spot_sums(rows, cols, values, labels, size, total, sum_vx, sum_vy, peak, peak_row, peak_col):
    """Per label: pixel count, summed counts, count-weighted coordinate sums, and the first
    maximum in raster order (DIALS's peak: the first maximum of the spot's shoebox)."""
    size[:] = 0
    total[:] = 0
    sum_vx[:] = 0
    sum_vy[:] = 0
    peak[:] = -1
    for k in range(rows.shape[0]):
        s = labels[k]
        v = values[k]
        size[s] += 1
        total[s] += v
        sum_vx[s] += v * cols[k]
        sum_vy[s] += v * rows[k]
        if v > peak[s]:
            peak[s] = v
            peak_row[s] = rows[k]
            peak_col[s] = cols[k]
