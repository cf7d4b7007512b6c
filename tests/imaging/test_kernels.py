"""Kernel details the reduction tests do not reach: defensive paths and compilation."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from imageserver.imaging import kernels


def test_out_of_range_flags_take_the_overload_colour_not_memory_beyond_the_palette() -> None:
    values = np.zeros((1, 2), dtype=np.uint16)
    flags = np.array([[kernels.SATURATED, 200]], dtype=np.uint8)
    palette = np.zeros(258, dtype=np.uint32)
    palette[256] = 1 | 2 << 8 | 3 << 16  # masked
    palette[257] = 9 | 8 << 8 | 7 << 16  # overload
    out = np.zeros((3, 1, 2), dtype=np.uint8)
    kernels.map_to_planes(values, flags, 0, 1, palette, 0, 1, 0, out)
    assert out[:, 0].T.tolist() == [[9, 8, 7], [9, 8, 7]]


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


def _reference_subsampling(plane: np.ndarray, kept: np.ndarray, keep: int) -> np.ndarray:
    """Plain NumPy: pad by repeating the last row/column, mean of 2 × 2, kept blocks whole."""
    half = ((plane.shape[0] + 1) // 2, (plane.shape[1] + 1) // 2)
    pad = ((0, 2 * half[0] - plane.shape[0]), (0, 2 * half[1] - plane.shape[1]))
    blocks = np.pad(plane, pad, mode="edge").astype(int).reshape(half[0], 2, half[1], 2)
    return np.where(kept, keep, (blocks.sum(axis=(1, 3)) + 2) // 4)


@pytest.mark.parametrize("shape", [(1077, 1024), (7, 9), (1, 1), (2, 3), (5, 2)])
@pytest.mark.parametrize("keep", [(85, 255), (-1, -1)])
def test_subsample_chroma_matches_the_plain_mean_with_kept_blocks(
    shape: tuple[int, int], keep: tuple[int, int]
) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    cb = rng.integers(0, 256, shape, dtype=np.uint8)
    cr = rng.integers(0, 256, shape, dtype=np.uint8)
    cb[shape[0] // 2, shape[1] // 2], cr[shape[0] // 2, shape[1] // 2] = 85, 255
    half = ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    out_cb, out_cr = np.empty(half, np.uint8), np.empty(half, np.uint8)
    kernels.subsample_chroma(cb, cr, keep[0], keep[1], 0, half[0], out_cb, out_cr)

    pad = ((0, 2 * half[0] - shape[0]), (0, 2 * half[1] - shape[1]))
    is_keep = (np.pad(cb, pad, mode="edge") == keep[0]) & (np.pad(cr, pad, mode="edge") == keep[1])
    kept = is_keep.reshape(half[0], 2, half[1], 2).any(axis=(1, 3))
    assert kept.any() == (keep[0] >= 0)
    np.testing.assert_array_equal(out_cb, _reference_subsampling(cb, kept, keep[0]))
    np.testing.assert_array_equal(out_cr, _reference_subsampling(cr, kept, keep[1]))


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
        "out = np.zeros((3, 1, 1), np.uint8)\n"
        "i = np.arange(258, dtype=np.uint32)\n"
        "palette = (3 * i % 256) | (2 * i % 256) << 8 | (i % 256) << 16\n"
        "kernels.map_to_planes(np.array([[7]], np.uint32), np.zeros((1, 1), np.uint8), 0, 10,\n"
        "    palette, 0, 1, 0, out)\n"
        "print(out[:, 0, 0].tolist())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    # index ⌊255 · 7 / 10⌋ = 178; the test palette holds (3i, 2i, i) mod 256 at i.
    assert result.stdout.strip() == "[22, 100, 178]"
    assert result.stderr.count("numba disk cache unavailable") == 1
