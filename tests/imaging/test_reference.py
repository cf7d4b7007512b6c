"""The NumPy reference's own building blocks, checked by hand (the reductions are compared
with it in test_reduce.py and test_stats.py)."""

from __future__ import annotations

import numpy as np

from imageserver.imaging.reference import NO_PIXEL, box_max, moments, visited


def test_box_max_handles_empty_and_last_boxes() -> None:
    column_max = np.array([3, NO_PIXEL, 7, 1], dtype=np.int64)
    lo = np.array([0, 1, 2, 4, 3], dtype=np.int64)
    hi = np.array([2, 2, 4, 4, 4], dtype=np.int64)
    assert box_max(column_max, lo, hi).tolist() == [3, NO_PIXEL, 7, NO_PIXEL, 1]


def test_box_max_of_repeated_single_columns() -> None:
    column_max = np.array([5, 9], dtype=np.int64)
    lo = np.array([0, 0, 1, 1], dtype=np.int64)
    assert box_max(column_max, lo, lo + 1).tolist() == [5, 5, 9, 9]


def test_visited_marks_the_union_of_boxes() -> None:
    seen = visited(np.array([1, 1, 4]), np.array([2, 2, 6]), 7)
    assert seen.tolist() == [False, True, False, False, True, True, False]


def test_moments_of_nothing_are_zero() -> None:
    empty = moments(np.array([], dtype=np.int64))
    assert (empty.n, empty.mean, empty.stddev, empty.rms, empty.min, empty.max) == (
        0, 0.0, 0.0, 0.0, 0, 0
    )  # fmt: skip
