"""Numba loops of the imaging core: plain loops writing into arrays the caller allocates.

Geometry, dtypes, threading and policy live in the callers (`reduce`, `stats`, `contrast`);
each kernel here is a loop over rows it is given. Signatures are explicit, so importing this
module compiles every specialisation, or loads it from numba's disk cache (see `reduce.warm_up`).

The kernels are serial and release the GIL (``nogil``); callers split large images into row
blocks over a thread pool. numba's own ``parallel=True`` is avoided on purpose: its OpenMP
layer (the one this environment provides) aborts a process forked after the kernels were
loaded ("fork() called from a process already using GNU OpenMP"), which is how workers are made
from the pre-warmed zygote, and its workqueue layer aborts when two request threads call a
kernel at once. Plain threads have neither problem; on the 2-core reference machine a
4362 × 4148 → 1024 reduction takes 4.1 ms this way against 3.9 ms with prange.

Max-pooling works on *keys*: key = value + 1 in the pixel dtype, so the dtype-max marker wraps
to 0, a masked pixel is forced to 0, and the max of the keys in a box is 0 exactly when the box
holds no usable pixel. One max over keys thus gives the value, the masked flag and the
saturated flag; the inner loop is branch-free and vectorises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from imageserver.jit import njit_cached as _jit

OK = 0
MASKED = 1
SATURATED = 2
MAX_SPAN = 1 << 40
"""Black − white beyond this maps every 32-bit value to index 0, as any larger span does."""

PIXEL_TYPES = (numba.uint16, numba.uint32)
u8, u4, i8, f8, boolean = numba.uint8, numba.uint32, numba.int64, numba.float64, numba.boolean


def readonly(dtype: Any, ndim: int = 1) -> Any:
    """A C-contiguous input array; writable arrays convert to it, so both are accepted."""
    return numba.types.Array(dtype, ndim, "C", readonly=True)


def writable(dtype: Any, ndim: int = 1) -> Any:
    """A C-contiguous output array."""
    return numba.types.Array(dtype, ndim, "C")


def _kernel(arguments: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], Any]:
    """njit with one explicit signature per pixel dtype, GIL released, disk-cached."""
    return _jit([numba.void(*arguments(pixel)) for pixel in PIXEL_TYPES])


def _inline() -> Callable[[Any], Any]:
    """A helper inlined into the kernels that call it."""
    return _jit(None, inline="always")


@_inline()
def _fold_source_row(src_row, mask_row, has_mask, col_keys):
    """col_keys[x] = max(col_keys[x], key of src_row[x]); returns the largest key of the row."""
    zero, one = src_row.dtype.type(0), src_row.dtype.type(1)
    row_max = zero
    if has_mask:
        for x in range(src_row.shape[0]):
            key = src_row.dtype.type(src_row[x] + one) if mask_row[x] == 0 else zero
            col_keys[x] = max(col_keys[x], key)
            row_max = max(row_max, key)
    else:
        for x in range(src_row.shape[0]):
            key = src_row.dtype.type(src_row[x] + one)
            col_keys[x] = max(col_keys[x], key)
            row_max = max(row_max, key)
    return row_max


@_inline()
def _count_saturated(src_row, mask_row, has_mask, saturation):
    """Usable pixels of one row at or above saturation (the marker never counts)."""
    marker = np.iinfo(src_row.dtype).max
    count = 0
    for x in range(src_row.shape[0]):
        value = src_row[x]
        if value >= saturation and value != marker and not (has_mask and mask_row[x] != 0):
            count += 1
    return count


@_inline()
def _finish_output_row(col_keys, col_lo, col_hi, sat_key, values_row, flags_row):
    """Max of the column keys in each box, turned back into a value and a flag.

    Indices are unsigned so numba drops its negative-index handling from the inner loop.
    """
    for c in range(col_lo.shape[0]):
        key = col_keys.dtype.type(0)
        for x in range(np.uint64(col_lo[c]), np.uint64(col_hi[c])):
            key = max(key, col_keys[x])
        values_row[c] = key
    for c in range(col_lo.shape[0]):
        key = values_row[c]
        flags_row[c] = MASKED if key == 0 else (SATURATED if key >= sat_key else OK)
        values_row[c] = key - (key > 0)


@_kernel(
    lambda pixel: (
        readonly(pixel, 2), readonly(u8, 2), boolean, readonly(i8), readonly(i8), readonly(i8),
        readonly(i8), readonly(i8), i8, writable(pixel, 2), writable(u8, 2), writable(i8),
    )
)  # fmt: skip
def max_pool_2d(
    src, mask, has_mask, row_lo, row_hi, count_lo, col_lo, col_hi, saturation,
    out_values, out_flags, sat_per_row,
):  # fmt: skip
    """Box maximum of usable pixels per output pixel; source rows stream in order.

    Saturated pixels of source rows [count_lo[r], row_hi[r]) go to sat_per_row[r], so each
    source pixel is counted once even when magnified rows share it.
    """
    col_start, col_stop = col_lo[0], col_hi[-1]
    col_keys = np.zeros(src.shape[1], dtype=src.dtype)
    window_keys = col_keys[col_start:col_stop]  # slices keep the inner loops at index 0
    for r in range(out_values.shape[0]):
        window_keys[:] = 0
        n_saturated = 0
        for y in range(row_lo[r], row_hi[r]):
            src_row = src[y, col_start:col_stop]
            mask_row = mask[y, col_start:col_stop] if has_mask else mask[0]
            row_max = _fold_source_row(src_row, mask_row, has_mask, window_keys)
            if y >= count_lo[r] and np.int64(row_max) > saturation:
                n_saturated += _count_saturated(src_row, mask_row, has_mask, saturation)
        sat_per_row[r] = n_saturated
        _finish_output_row(col_keys, col_lo, col_hi, saturation + 1, out_values[r], out_flags[r])


@_kernel(
    lambda pixel: (
        readonly(pixel, 2), readonly(u8, 2), i8, i8, readonly(u4), i8, i8, i8, writable(u8, 3),
    )
)  # fmt: skip
def map_to_planes(values, flags, white, black, palette, row_start, row_stop, out_row0, out):
    """Legacy contrast (§5.1) of rows [row_start, row_stop) into up to 4 channel planes.

    index = ⌊255·(v − white)/(black − white)⌋ clamped to 0..255; indices 256 and 257 (flags
    MASKED and SATURATED, larger flags count as SATURATED) pick the masked and overload
    colours. ``palette`` holds 258 colours packed one byte per channel (channel k in bits
    8k..8k+7): one lookup per pixel, then shifts, which vectorise where per-channel lookups
    do not. Row r goes to ``out[:, out_row0 + r]``, so a caller can leave rows for a banner.

    The index is one float64 division: for integers 0 ≤ d ≤ span < 2**45 the correctly
    rounded quotient 255·d/span floors to the exact integer quotient (an error of at most
    2**-45 cannot cross an integer, which is at least 1/span away), and it vectorises where
    int64 arithmetic does not (5× faster). A span beyond MAX_SPAN is clamped to it, which
    changes no index: both put every 32-bit value at index 0.
    """
    fspan = np.float64(min(max(black - white, 1), MAX_SPAN))
    fwhite = np.float64(white)
    colours = np.empty(values.shape[1], dtype=np.uint32)
    for r in range(row_start, row_stop):
        for c in range(values.shape[1]):
            d = min(max(np.float64(values[r, c]) - fwhite, 0.0), fspan)
            index = np.int64((255.0 * d) / fspan)
            flag = flags[r, c]
            colours[c] = palette[index if flag == OK else 255 + min(flag, SATURATED)]
        for ch in range(out.shape[0]):
            plane_row = out[ch, out_row0 + r]
            shift = np.uint32(8 * ch)
            for c in range(values.shape[1]):
                plane_row[c] = np.uint8((colours[c] >> shift) & np.uint32(255))


@_inline()
def _subsample_block(cb, cr, keep_cb, keep_cr, r0, r1, c0, c1, out_cb, out_cr, out_c):
    """One 2 × 2 block of `subsample_chroma` (rows r0, r1 and columns c0, c1 may repeat)."""
    b00, b01 = np.int32(cb[r0, c0]), np.int32(cb[r0, c1])
    b10, b11 = np.int32(cb[r1, c0]), np.int32(cb[r1, c1])
    r00, r01 = np.int32(cr[r0, c0]), np.int32(cr[r0, c1])
    r10, r11 = np.int32(cr[r1, c0]), np.int32(cr[r1, c1])
    kept = (
        ((b00 == keep_cb) & (r00 == keep_cr))
        | ((b01 == keep_cb) & (r01 == keep_cr))
        | ((b10 == keep_cb) & (r10 == keep_cr))
        | ((b11 == keep_cb) & (r11 == keep_cr))
    )
    out_cb[r0 // 2, out_c] = keep_cb if kept else (b00 + b01 + b10 + b11 + np.int32(2)) >> 2
    out_cr[r0 // 2, out_c] = keep_cr if kept else (r00 + r01 + r10 + r11 + np.int32(2)) >> 2


@_jit(
    [numba.void(readonly(u8, 2), readonly(u8, 2), i8, i8, i8, i8, writable(u8, 2), writable(u8, 2))]
)
def subsample_chroma(cb, cr, keep_cb, keep_cr, row_start, row_stop, out_cb, out_cr):
    """4:2:0 chroma: rows [row_start, row_stop) of the half-size planes from full-size ones.

    Each output pixel is the rounded mean of its 2 × 2 block (the last row or column counts
    twice where the size is odd, as libjpeg pads), except that a block holding the ``keep``
    chroma takes it whole: a lone overload pixel keeps its own colour, not a quarter of it.
    A ``keep`` outside 0..255 (e.g. -1) keeps nothing.
    """
    last_row, whole = cb.shape[0] - 1, cb.shape[1] // 2
    # int32 throughout: int64 comparisons halve the SIMD width (0.2 → 1 ms for 1024 × 1077).
    kcb = np.int32(keep_cb if 0 <= keep_cb <= 255 else -1)
    kcr = np.int32(keep_cr if 0 <= keep_cr <= 255 else -1)
    for out_r in range(row_start, row_stop):
        r0, r1 = 2 * out_r, min(2 * out_r + 1, last_row)
        for c in range(whole):  # a separate loop for the odd last column keeps this one SIMD
            _subsample_block(cb, cr, kcb, kcr, r0, r1, 2 * c, 2 * c + 1, out_cb, out_cr, c)
        if whole < out_cb.shape[1]:  # odd width: the last column counts twice
            last = cb.shape[1] - 1
            _subsample_block(cb, cr, kcb, kcr, r0, r1, last, last, out_cb, out_cr, whole)


@_kernel(
    lambda pixel: (
        readonly(pixel, 2), readonly(u8, 2), i8, f8, f8, f8, f8, writable(u8, 2), writable(i8),
        writable(i8), writable(f8), writable(i8), writable(i8),
    )
)  # fmt: skip
def shell_moments(
    values, flags, row0, beam_x, beam_y, d2_min, shell_scale, shells, counts, sums, sums2,
    mins, maxs,
):  # fmt: skip
    """Pass 1: each pixel's equal-area shell, then per shell over usable pixels: n, exact
    integer sum, float64 sum of squares, min and max. Row r of the arrays is view row row0 + r.

    The squared distance is taken at the pixel centre; shell = ⌊(d² − d²min)·scale⌋ clamped
    to the shells (written so that a NaN lands in shell 0, never outside the arrays). Sums go
    to local arrays first: blocks running side by side would otherwise share cache lines.
    """
    n, top = counts.shape[0], float(counts.shape[0] - 1)
    n_px, total, total2 = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float64)
    low, high = np.full(n, np.iinfo(np.int64).max), np.full(n, -1, np.int64)
    for r in range(values.shape[0]):
        dy = row0 + r + 0.5 - beam_y
        for c in range(values.shape[1]):
            dx = c + 0.5 - beam_x
            scaled = (dx * dx + dy * dy - d2_min) * shell_scale
            shells[r, c] = np.int64(min(scaled, top)) if scaled > 0.0 else 0
        # Along a row the shell changes rarely: sum a run in registers, then add it to its
        # shell (adding every pixel through memory serialises on the same counter).
        c = 0
        while c < values.shape[1]:
            s = shells[r, c]
            run_n, run_sum, run_sum2 = 0, np.int64(0), 0.0
            run_low, run_high = np.iinfo(np.int64).max, np.int64(-1)
            while c < values.shape[1] and shells[r, c] == s:
                if flags[r, c] != MASKED:
                    v = np.int64(values[r, c])
                    run_n += 1
                    run_sum += v
                    run_sum2 += np.float64(v) * np.float64(v)
                    run_low = min(run_low, v)
                    run_high = max(run_high, v)
                c += 1
            n_px[s] += run_n
            total[s] += run_sum
            total2[s] += run_sum2
            low[s] = min(low[s], run_low)
            high[s] = max(high[s], run_high)
    counts[:], sums[:], sums2[:], mins[:], maxs[:] = n_px, total, total2, low, high


@_kernel(
    lambda pixel: (
        readonly(pixel, 2), readonly(u8, 2), readonly(u8, 2), readonly(f8), readonly(f8),
        writable(f8), writable(i8),
    )
)  # fmt: skip
def shell_deviations(values, flags, shells, means, spot_limits, dev2, spots):
    """Pass 2: squared deviations from each shell's mean, and pixels above its spot limit."""
    deviations2, n_spots = np.zeros(dev2.shape[0]), np.zeros(spots.shape[0], np.int64)
    for r in range(values.shape[0]):
        c = 0
        while c < values.shape[1]:  # runs of one shell, as in shell_moments
            s = shells[r, c]
            mean, limit = means[s], spot_limits[s]
            run_dev2, run_spots = 0.0, 0
            while c < values.shape[1] and shells[r, c] == s:
                if flags[r, c] != MASKED:
                    d = np.float64(values[r, c]) - mean
                    run_dev2 += d * d
                    run_spots += d > limit
                c += 1
            deviations2[s] += run_dev2
            n_spots[s] += run_spots
    dev2[:], spots[:] = deviations2, n_spots
