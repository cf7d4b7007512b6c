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
CORE = 2
"""Mark of a core pixel in the first pass's map (1: not background, 0: background)."""

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
def _slide_columns(new_row, old_row, col_m, col_x, col_y):
    """Column sums gain ``new_row`` and lose ``old_row``: counts, values and squared values of
    the pixels in the sum (usable, below 2^24). Branch-free, so the loop vectorises."""
    for c in range(new_row.shape[0]):
        a = np.int64(new_row[c])
        b = np.int64(old_row[c])
        a_in = (a >= 0) & (a < BIG)
        b_in = (b >= 0) & (b < BIG)
        a = a if a_in else 0
        b = b if b_in else 0
        col_m[c] += np.int32(a_in) - np.int32(b_in)
        col_x[c] += a - b
        col_y[c] += a * a - b * b


@_jit(None, inline="always")
def _row(clean, r, outside):
    """Row r of the image, or a row of unusable pixels outside it."""
    return clean[r] if 0 <= r < clean.shape[0] else outside


@_jit(None, inline="always")
def _is_dispersed(v, m, x, y, root, min_local, nsig_b, nsig_s, gain, threshold, extended):
    """DIALS's dispersion test of one pixel, float operation for operation as DIALS writes it
    (``root`` = √(2(m − 1))). With ``extended`` only the index of dispersion is tested (the
    first pass of dispersion_extended); without it the pixel must also be strong."""
    if v < 0 or m < min_local or x < 0 or not (extended or v > threshold):
        return False
    fm, fx, fy = float(m), float(x), float(y)
    if gain == 1.0:
        a = fm * fy - fx * fx - fx * (fm - 1)
        c = fx * nsig_b * root
    else:
        a = fm * fy - fx * fx
        c = gain * fx * (fm - 1 + nsig_b * root)
    if not a > c:
        return False
    if extended:
        return True
    b = fm * v - fx
    d = nsig_s * math.sqrt(fx * fm if gain == 1.0 else gain * fx * fm)
    return b > d


_DISPERSION_ARGS = (readonly(i4, 2), readonly(i4), i8, i8, i8, i8, f8, f8, f8, f8, boolean)


@_jit([numba.int64(*_DISPERSION_ARGS, writable(u1, 2), writable(i4))])
def dispersion_rows(clean, outside, row_start, row_stop, half, min_local, nsig_b, nsig_s, gain,
                    threshold, extended, out, flagged):  # fmt: skip
    """DIALS's dispersion test over a (2·half+1)² window for rows [row_start, row_stop).

    ``extended`` False: the strong pixels of the plain dispersion algorithm. True: the first
    pass of dispersion_extended, the usable pixels that are *not* background (DIALS 3.12
    counts masked pixels as background here, so they stop the erosion). Each such pixel gets
    1 in ``out`` (which holds rows [row_start, row_stop)) and its flat index, in raster
    order, in ``flagged``; returns their number, so that later passes visit only them.
    ``outside`` is a row of -1 (width pixels), standing for rows beyond the image.

    Window sums are running sums: per column over the window's rows, then along the row over
    columns padded with zeros (half + 1 on the left, half on the right), so that sliding
    needs no bounds test.
    """
    width = clean.shape[1]
    span = 2 * half + 1
    col_m = np.zeros(width + span, dtype=np.int32)
    col_x = np.zeros(width + span, dtype=np.int64)
    col_y = np.zeros(width + span, dtype=np.int64)
    inside = slice(half + 1, half + 1 + width)  # the image's columns
    ahead, behind = slice(span, span + width), slice(0, width)  # enter, leave the window
    in_m, in_x, in_y = col_m[inside], col_x[inside], col_y[inside]
    for r in range(row_start - half - 1, row_start + half):
        _slide_columns(_row(clean, r, outside), outside, in_m, in_x, in_y)
    roots = np.empty(span * span + 1, dtype=np.float64)
    for k in range(roots.shape[0]):
        roots[k] = math.sqrt(2.0 * (k - 1.0)) if k >= 1 else 0.0
    n = 0
    for j in range(row_start, row_stop):
        new, old = _row(clean, j + half, outside), _row(clean, j - half - 1, outside)
        _slide_columns(new, old, in_m, in_x, in_y)
        m = np.int64(0)
        x = np.int64(0)
        y = np.int64(0)
        for k in range(span):
            m += col_m[k]
            x += col_x[k]
            y += col_y[k]
        src = clean[j]
        dst = out[j - row_start]
        m_ahead, m_behind = col_m[ahead], col_m[behind]
        x_ahead, x_behind = col_x[ahead], col_x[behind]
        y_ahead, y_behind = col_y[ahead], col_y[behind]
        for i in range(width):
            m += m_ahead[i] - m_behind[i]
            x += x_ahead[i] - x_behind[i]
            y += y_ahead[i] - y_behind[i]
            v = src[i]
            hit = _is_dispersed(v, m, x, y, roots[m], min_local, nsig_b, nsig_s, gain,
                                threshold, extended)  # fmt: skip
            dst[i] = hit
            if hit:
                flagged[n] = j * width + i
                n += 1
    return n


@_jit(None, inline="always")
def _is_core(flags, j, i, radius):
    """No pixel within Chebyshev distance ``radius`` of (j, i) in the image is background."""
    height, width = flags.shape
    for jj in range(max(0, j - radius), min(height, j + radius + 1)):
        for ii in range(max(0, i - radius), min(width, i + radius + 1)):
            if flags[jj, ii] == 0:
                return False
    return True


@_jit([numba.int64(readonly(u1, 2), readonly(i4), i8, writable(i4))])
def core_pixels(not_background, candidates, radius, core):
    """The erosion of dispersion_extended: of the ``candidates`` (the first pass's flagged
    pixels, flat indices), those with no background pixel of the image within Chebyshev
    distance ``radius`` (DIALS: distance ≥ kernel size), into ``core``; returns their number.

    These are the pixels DIALS leaves out of the second pass's background; only they can be
    strong. Background pixels are far more common, so most candidates stop at a neighbour.
    """
    width = not_background.shape[1]
    n = 0
    for p in candidates:
        if _is_core(not_background, p // width, p % width, radius):
            core[n] = p
            n += 1
    return n


@_jit([numba.void(readonly(i4), u1, writable(u1, 2))])
def mark_pixels(pixels, value, flags):
    """flags = value at the given flat indices."""
    width = flags.shape[1]
    for p in pixels:
        flags[p // width, p % width] = value


@_jit([numba.int64(readonly(i4, 2), readonly(u1, 2), readonly(i4), i8, f8, f8, f8, writable(i4))])
def extended_strong_pixels(clean, flags, core, half, nsig_s, gain, threshold, strong):
    """Second pass of dispersion_extended: a core pixel (``flags`` == CORE) is strong when
    above the global threshold and at least mean + nsig_s·√(gain·mean), the mean taken over
    the background pixels (usable, not core, below 2^24) of its (2·half+1)² window (0 when
    fewer than 2). Visits only the ``core`` pixels (flat indices); writes the strong ones to
    ``strong``, in the same order, and returns their number.
    """
    height, width = clean.shape
    n = 0
    for p in core:
        j, i = p // width, p % width
        m = np.int64(0)
        x = np.int64(0)
        for jj in range(max(0, j - half), min(height, j + half + 1)):
            for ii in range(max(0, i - half), min(width, i + half + 1)):
                w = np.int64(clean[jj, ii])
                if 0 <= w < BIG and flags[jj, ii] != CORE:
                    m += 1
                    x += w
        fm, fx = float(m), float(x)
        mean = fx / fm if m >= 2 else 0.0
        if gain == 1.0:
            bound = mean + nsig_s * math.sqrt(mean)
        else:
            bound = mean + nsig_s * math.sqrt(gain * mean)
        v = clean[j, i]
        if v > threshold and v >= bound:
            strong[n] = p
            n += 1
    return n


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


@_jit([numba.int64(readonly(i4), readonly(i4, 2), *(writable(i8),) * 5)])
def label_pixels(strong, clean, rows, cols, values, labels, parent):
    """4-connected components of the strong pixels (flat indices in raster order), labelled
    0… by first pixel in raster order (DIALS's LabelImageStack: edges to the left and upper
    neighbours only).

    Arrays are sized to the number of strong pixels; fills rows, cols, values (counts) and
    labels per strong pixel and returns the number of labels. Only strong pixels are
    visited: a column remembers the row and vertex of its last strong pixel.
    """
    width = clean.shape[1]
    above_row = np.full(width, -2, dtype=np.int64)
    above_vertex = np.zeros(width, dtype=np.int64)
    for n in range(strong.shape[0]):
        p = strong[n]
        j, i = p // width, p % width
        parent[n] = n
        rows[n] = j
        cols[n] = i
        values[n] = clean[j, i]
        if i > 0 and n > 0 and strong[n - 1] == p - 1:
            _join(parent, n, n - 1)
        if above_row[i] == j - 1:
            _join(parent, n, above_vertex[i])
        above_row[i] = j
        above_vertex[i] = n
    n_labels = 0
    for k in range(strong.shape[0]):
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
