"""Kernel details the reduction tests do not reach: defensive paths and compilation."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from imageserver.imaging import kernels


def test_out_of_range_flags_take_the_overload_colour_not_memory_beyond_the_palette() -> None:
    values = np.zeros((1, 2), dtype=np.uint16)
    flags = np.array([[kernels.SATURATED, 200]], dtype=np.uint8)
    lut = np.zeros((256, 3), dtype=np.uint8)
    masked = np.array([1, 2, 3], dtype=np.uint8)
    overload = np.array([9, 8, 7], dtype=np.uint8)
    out = np.zeros((1, 2, 3), dtype=np.uint8)
    kernels.map_to_rgb(values, flags, 0, 1, lut, masked, overload, out)
    assert out[0].tolist() == [[9, 8, 7], [9, 8, 7]]


def test_max_pool_counts_saturated_pixels_only_from_count_lo() -> None:
    src = np.array([[5, 1], [1, 5], [5, 5]], dtype=np.uint32)
    mask = np.zeros((1, 1), dtype=np.uint8)
    rows_lo, rows_hi = np.array([0, 1], dtype=np.int64), np.array([2, 3], dtype=np.int64)
    count_lo = np.array([0, 2], dtype=np.int64)  # row 1 already counted by output row 0
    cols_lo, cols_hi = np.array([0], dtype=np.int64), np.array([2], dtype=np.int64)
    values = np.zeros((2, 1), dtype=np.uint32)
    flags = np.zeros((2, 1), dtype=np.uint8)
    per_row = np.zeros(2, dtype=np.int64)
    kernels.max_pool_2d(
        src, mask, False, rows_lo, rows_hi, count_lo, cols_lo, cols_hi, 5, values, flags, per_row
    )
    assert per_row.tolist() == [2, 2]
    assert values[:, 0].tolist() == [5, 5]
    assert flags[:, 0].tolist() == [kernels.SATURATED] * 2


def test_kernels_compile_in_memory_when_no_cache_directory_is_writable() -> None:
    env = dict(
        os.environ,
        NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator",  # only $NUMBA_CACHE_DIR
        NUMBA_CACHE_DIR="/dev/null/cannot-exist",
    )
    script = (
        "import numpy as np\n"
        "from imageserver.imaging.reduce import warm_up\n"
        "from imageserver.imaging import kernels\n"
        "warm_up()\n"
        "out = np.zeros((1, 1, 3), np.uint8)\n"
        "kernels.map_to_rgb(np.array([[7]], np.uint32), np.zeros((1, 1), np.uint8), 0, 10,\n"
        "    np.arange(768, dtype=np.uint16).astype(np.uint8).reshape(256, 3),\n"
        "    np.zeros(3, np.uint8), np.zeros(3, np.uint8), out)\n"
        "print(out.tolist())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    # index ⌊255 · 7 / 10⌋ = 178; the test LUT holds (3i, 3i + 1, 3i + 2) mod 256 at i.
    assert result.stdout.strip() == "[[[22, 23, 24]]]"
    assert result.stderr.count("numba disk cache unavailable") == 1
