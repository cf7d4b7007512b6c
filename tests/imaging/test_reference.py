"""The NumPy reference's own building blocks, checked by hand (the reductions are compared
with it in test_reduce.py and test_stats.py), and checked to stand apart from production."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.formats.base import Frame, FrameMeta
from imageserver.imaging import geometry
from imageserver.imaging.geometry import View, axis_bounds
from imageserver.imaging.reduce import Reduced, reduce_frame
from imageserver.imaging.reference import (
    NO_PIXEL,
    box_edges,
    box_max,
    moments,
    reduce_frame_reference,
    saturation_level,
    shell_range,
    view_stats_reference,
    visited,
)
from imageserver.imaging.stats import shell_geometry


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


def test_box_edges_by_hand() -> None:
    # 10 columns into 4 boxes of 2.5: edges at ⌊0, 2.5, 5, 7.5, 10⌋.
    assert [e.tolist() for e in box_edges(0.0, 10.0, 4, 10)] == [[0, 2, 5, 7], [2, 5, 7, 10]]
    # 2 columns onto 4 outputs (step ½): centres at 0.25, 0.75, 1.25, 1.75.
    assert [e.tolist() for e in box_edges(0.0, 2.0, 4, 2)] == [[0, 0, 1, 1], [1, 1, 2, 2]]
    # Window 3..9 of a 5-column frame in 3 boxes: [3, 5), [5, 7) and [7, 9), clipped at 5.
    assert [e.tolist() for e in box_edges(3.0, 6.0, 3, 5)] == [[3, 5, 5], [5, 5, 5]]
    # A window starting left of the frame: [-4, -2) is empty, [-2, 0) too, [0, 2) is read.
    assert [e.tolist() for e in box_edges(-4.0, 6.0, 3, 5)] == [[0, 0, 0], [0, 0, 2]]


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(-400, 400),
    window=st.floats(0.3, 600),
    out_px=st.integers(1, 200),
    source_px=st.integers(1, 300),
)
def test_box_edges_agree_with_production_axis_bounds(
    start: float, window: float, out_px: int, source_px: int
) -> None:
    """Two implementations of one definition, written apart: a bug in either shows here."""
    lo, hi = box_edges(start, window, out_px, source_px)
    want_lo, want_hi = axis_bounds(start, window, out_px, source_px)
    np.testing.assert_array_equal(lo, want_lo)
    np.testing.assert_array_equal(hi, want_hi)


def test_saturation_level_is_the_file_value_else_the_top_real_value() -> None:
    assert saturation_level(None, 0xFFFF) == 0xFFFE
    assert saturation_level(500, 0xFFFF) == 500
    assert saturation_level(0x1FFFF, 0xFFFF) == 0x1FFFF  # above every usable value: none


def test_shell_range_by_hand() -> None:
    # 4 × 2 output, centres at x 0.5..3.5, y 0.5..1.5.
    assert shell_range(2.0, 1.0, 4, 2) == (0.0, 1.5**2 + 0.5**2)  # inside: from 0
    assert shell_range(10.0, 1.0, 4, 2) == (6.5**2, 9.5**2 + 0.5**2)  # right of the view
    assert shell_range(-1.0, -2.0, 4, 2) == (1.5**2 + 2.5**2, 4.5**2 + 3.5**2)  # corner
    # On the view but within half a pixel of its edge: outside the centres' span.
    assert shell_range(0.25, 1.0, 4, 2) == (0.25**2, 3.25**2 + 0.5**2)


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 60),
    height=st.integers(1, 60),
    beam_x=st.floats(-300, 800),
    beam_y=st.floats(-300, 800),
    x0=st.floats(-100, 400),
    window=st.floats(1, 500),
)
def test_shell_range_agrees_with_production_shell_geometry(
    width: int, height: int, beam_x: float, beam_y: float, x0: float, window: float
) -> None:
    view = View(width, height, x0, x0 / 2, window, window * 1.5, 2.0, 0.0, 0.0)
    values = np.zeros((height, width), dtype=np.uint16)
    reduced = Reduced(values, np.zeros_like(values, dtype=np.uint8), 0, view)
    geometry_ = shell_geometry(reduced, beam_x, beam_y)
    assert shell_range(geometry_.beam_x, geometry_.beam_y, width, height) == (
        geometry_.d2_min,
        geometry_.d2_max,
    )


@pytest.mark.parametrize("beam", [math.nan, math.inf, -1e12])
def test_an_unusable_beam_centre_gives_no_shells(beam: float) -> None:
    values = np.array([[1, 2]], dtype=np.uint16)
    view = View(2, 1, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0, 0.0)
    stats = view_stats_reference(Reduced(values, np.zeros((1, 2), np.uint8), 0, view), 1.0, beam)
    assert stats.spots is None and stats.shells == ()
    assert (stats.n, stats.mean) == (2, 1.5)


def test_the_reference_does_not_follow_a_bug_in_production_box_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were the reference built on `geometry.box_bounds`, it would make the same mistake."""

    def one_too_many(
        start_px: float, window_px: float, out_px: int, source_px: int
    ) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = axis_bounds(start_px, window_px, out_px, source_px)
        return lo, np.minimum(hi + 1, source_px)

    pixels = np.arange(1, 17, dtype=np.uint16).reshape(4, 4)
    frame = Frame(pixels, None, FrameMeta("test", 4, 4, 16), 1, Path("test.h5"))
    view = View(2, 2, 0.0, 0.0, 4.0, 4.0, 1.0, 0.0, 0.0)
    monkeypatch.setattr(geometry, "axis_bounds", one_too_many)
    assert reduce_frame(frame, view).values.tolist() == [[11, 12], [15, 16]]
    assert reduce_frame_reference(frame, view).values.tolist() == [[6, 8], [14, 16]]
