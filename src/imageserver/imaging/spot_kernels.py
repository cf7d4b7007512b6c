"""Numba loops of the spot finder: plain loops over the rows they are given, writing into `out`.

Policy (which pixels are usable, DIALS's parameters, threads, filters) lives in `spotfinder`;
the reference these must equal exactly is `spotfinder_reference`. A *clean* image is int32:
a usable pixel's count, or -1 for a pixel that is masked, a gap marker, at or above the
detector's overload, or outside the requested resolution range.

Window sums are exact int64 sums (a column sum per window of rows, slid down the image,
then summed along each row), which is what DIALS's summed-area table gives for integer
counts; every decision is then made in float64 operation for operation as DIALS writes it
(dials algorithms/image/threshold/local.h), so equal sums give equal decisions. The dense pass
first screens with a looser, root-free form of the test (`_screen`) that provably keeps
every pixel the exact test keeps, and runs the exact test only on the pixels it keeps.
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
PACK = 40
"""A window's count and sum travel as one int64, count << PACK | sum: exact, as a sum of
at most 101² counts below 2^24 stays below 2^40 and the count below 2^23."""
SUM_MASK = (1 << PACK) - 1
LOOSE = 1.0 - 2.0**-40
"""Slack of the root-free screen (`_screen`): far above its rounding, far below any gap."""
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
def _slide_columns(new_row, old_row, col_mx, col_y):
    """Column sums gain ``new_row`` and lose ``old_row``: count and values of the pixels in
    the sum (usable, below 2^24), packed as count << PACK | sum, and squared values.
    Branch-free, so the loop vectorises."""
    for c in range(new_row.shape[0]):
        a = np.int64(new_row[c])
        b = np.int64(old_row[c])
        a_in = (a >= 0) & (a < BIG)
        b_in = (b >= 0) & (b < BIG)
        a = a & (BIG - 1) if a_in else 0  # the mask only tells LLVM a < 2^24: a cheap square
        b = b & (BIG - 1) if b_in else 0
        col_mx[c] += ((np.int64(a_in) - np.int64(b_in)) << PACK) + (a - b)
        col_y[c] += a * a - b * b


@_jit(None, inline="always")
def _row(clean, r, outside):
    """Row r of the image, or a row of unusable pixels outside it."""
    return clean[r] if 0 <= r < clean.shape[0] else outside


@_jit(None, inline="always")
def _window_sums(col_mx, col_y, span, win_mx, win_y):
    """win[i] = col[i] + … + col[i + span − 1]: a running sum, two int64 chains a pixel."""
    mx = np.int64(0)
    y = np.int64(0)
    for k in range(span - 1):
        mx += col_mx[k]
        y += col_y[k]
    for i in range(win_mx.shape[0]):
        mx += col_mx[i + span - 1]
        y += col_y[i + span - 1]
        win_mx[i] = mx
        win_y[i] = y
        mx -= col_mx[i]
        y -= col_y[i]


@_jit(None, inline="always")
def _is_dispersed(v, m, x, y, min_local, nsig_b, nsig_s, gain, threshold, extended):
    """DIALS's dispersion test of one pixel, float operation for operation as DIALS writes it.
    With ``extended`` only the index of dispersion is tested (the first pass of
    dispersion_extended); without it the pixel must also be strong."""
    if v < 0 or m < min_local or x < 0 or not (extended or v > threshold):
        return False
    fm, fx, fy = float(m), float(x), float(y)
    root = math.sqrt(2.0 * (fm - 1.0))
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


@_jit(None, inline="always")
def _may_pass(v, mx, y, min_local, nsig_b, nsig_s, unit_gain, threshold, extended):
    """Whether the pixel (count v, window mx and y) may pass `_is_dispersed`.

    The exact test takes one or two square roots a pixel, which cost more than the rest of
    the pass together. Here, for gain 1, each test ``a > c`` with c = p·√q (c ≥ 0) is
    screened as ``a > 0 and a² ≥ p²·q·LOOSE``: the computed squares are within 8 ulp of
    the exact ones (c has 3 roundings, p²·q 2, a² 1), far inside LOOSE's 2⁻⁴⁰, so no
    pixel that passes is lost, and the few extra ones are tested exactly afterwards.
    Other gains pass every usable pixel on. Branch-free and root-free, so it vectorises.
    """
    m = mx >> PACK
    fm, fx, fy = float(m), float(mx & SUM_MASK), float(y)
    a = fm * fy - fx * fx - fx * (fm - 1)
    p = fx * nsig_b
    dispersed = (a > 0) & (a * a >= p * p * (2.0 * (fm - 1.0)) * LOOSE)
    b = fm * v - fx
    strong = (v > threshold) & (b > 0) & (b * b >= nsig_s * nsig_s * (fx * fm) * LOOSE)
    maybe = (not unit_gain) | (dispersed & (extended | strong))
    return (v >= 0) & (m >= min_local) & maybe


@_jit(None, inline="always")
def _screen(src, col_mx, col_y, span, min_local, nsig_b, nsig_s, gain, threshold, extended,
            win_mx, win_y, dst):  # fmt: skip
    """dst = 1 for every pixel of the row that may pass `_is_dispersed`, else 0 (any span):
    window sums as running sums into win_mx, win_y, then `_may_pass` (vectorised)."""
    _window_sums(col_mx, col_y, span, win_mx, win_y)
    unit_gain = gain == 1.0
    for i in range(src.shape[0]):
        dst[i] = _may_pass(src[i], win_mx[i], win_y[i], min_local, nsig_b, nsig_s, unit_gain,
                           threshold, extended)  # fmt: skip


@_jit(None, inline="always")
def _screen_7(src, col_mx, col_y, min_local, nsig_b, nsig_s, gain, threshold, extended, dst):
    """`_screen` for DIALS's default 7 × 7 window: the seven column sums added in place, so
    sums and screen are one branch-free loop with no carried state, which vectorises."""
    unit_gain = gain == 1.0
    for i in range(src.shape[0]):
        mx = (col_mx[i] + col_mx[i + 1]) + (col_mx[i + 2] + col_mx[i + 3]) + (
            col_mx[i + 4] + col_mx[i + 5]) + col_mx[i + 6]  # fmt: skip
        y = (col_y[i] + col_y[i + 1]) + (col_y[i + 2] + col_y[i + 3]) + (
            col_y[i + 4] + col_y[i + 5]) + col_y[i + 6]  # fmt: skip
        dst[i] = _may_pass(src[i], mx, y, min_local, nsig_b, nsig_s, unit_gain, threshold,
                           extended)  # fmt: skip


@_jit(None, inline="always")
def _confirm(dst, src, col_mx, col_y, span, min_local, nsig_b, nsig_s, gain, threshold,
             extended, first, flagged, n):  # fmt: skip
    """The exact test of the screened pixels of a row: dst keeps 1 only where it passes,
    and each such pixel's flat index (``first`` + column) goes to flagged[n…]; returns the
    new n. Screened pixels are rare, so the branch is almost always predicted, and their
    window sums are added again from the column sums."""
    for i in range(dst.shape[0]):
        if dst[i]:
            mx = np.int64(0)
            y = np.int64(0)
            for k in range(i, i + span):
                mx += col_mx[k]
                y += col_y[k]
            hit = _is_dispersed(src[i], mx >> PACK, mx & SUM_MASK, y, min_local, nsig_b,
                                nsig_s, gain, threshold, extended)  # fmt: skip
            dst[i] = hit
            if hit:
                flagged[n] = first + i
                n += 1
    return n


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

    Per row: column sums slide down one row (vectorised), window sums run along the row
    over columns padded with ``half`` zeros on each side, a root-free screen marks the
    pixels that may pass (vectorised), and only those take the exact test. For DIALS's
    default 7 × 7 window the window sums are added in the screen's own loop (`_screen_7`).
    """
    width = clean.shape[1]
    span = 2 * half + 1
    col_mx = np.zeros(width + 2 * half, dtype=np.int64)
    col_y = np.zeros(width + 2 * half, dtype=np.int64)
    in_mx, in_y = col_mx[half : half + width], col_y[half : half + width]
    win_mx = np.empty(width, dtype=np.int64)
    win_y = np.empty(width, dtype=np.int64)
    for r in range(row_start - half - 1, row_start + half):
        _slide_columns(_row(clean, r, outside), outside, in_mx, in_y)
    n = 0
    for j in range(row_start, row_stop):
        new, old = _row(clean, j + half, outside), _row(clean, j - half - 1, outside)
        _slide_columns(new, old, in_mx, in_y)
        src, dst = clean[j], out[j - row_start]
        if half == 3:
            _screen_7(src, col_mx, col_y, min_local, nsig_b, nsig_s, gain, threshold, extended,
                      dst)  # fmt: skip
        else:
            _screen(src, col_mx, col_y, span, min_local, nsig_b, nsig_s, gain, threshold,
                    extended, win_mx, win_y, dst)  # fmt: skip
        n = _confirm(dst, src, col_mx, col_y, span, min_local, nsig_b, nsig_s, gain, threshold,
                     extended, j * width, flagged, n)  # fmt: skip
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
