"""View planning and source boxes: legacy zoom and segment rules, aspect ratio, edge tiles."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.config import LimitSettings
from imageserver.errors import CorruptFrameError, RequestError
from imageserver.imaging.geometry import View, axis_bounds, box_bounds, plan_view


def test_full_frame_keeps_the_detector_aspect_ratio() -> None:
    view = plan_view(4148, 4362, xsize=1024)
    assert (view.width_px, view.height_px) == (1024, round(1024 * 4362 / 4148))
    assert (view.x0_px, view.y0_px, view.window_w_px, view.window_h_px) == (0, 0, 4148, 4362)


def test_zoom_is_rounded_to_a_tenth_and_picks_a_segment() -> None:
    view = plan_view(1000, 800, xsize=100, zoom=2.04, segcol=1, segrow=0.5)
    assert view.zoom == 2.0
    assert (view.window_w_px, view.window_h_px) == (500, 400)
    assert (view.x0_px, view.y0_px) == (500, 200)
    assert plan_view(1000, 800, xsize=100, zoom=2.05).zoom == 2.1


def test_zoom_at_most_one_shows_the_whole_frame() -> None:
    view = plan_view(1000, 800, xsize=100, zoom=1.04, segcol=3, segrow=2)
    assert (view.zoom, view.segcol, view.segrow) == (1.0, 0.0, 0.0)
    assert (view.x0_px, view.y0_px) == (0, 0)
    assert plan_view(1000, 800, xsize=100, zoom=-5).zoom == 1.0


def test_xsize_below_eight_becomes_eight() -> None:
    assert plan_view(100, 100, xsize=0).width_px == 8
    assert plan_view(100, 100, xsize=-3).height_px == 8


def test_ysize_overrides_the_height() -> None:
    view = plan_view(1000, 800, xsize=100, ysize=30)
    assert (view.width_px, view.height_px) == (100, 30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"xsize": 10001},
            "xsize 10001 is above the limit of 10000 pixels ([limits] max_xsize_px)",
        ),
        ({"xsize": 100, "ysize": 7}, "ysize 7 is outside 8..10000 pixels ([limits] max_xsize_px)"),
        ({"xsize": 100, "ysize": 10001}, "ysize 10001 is outside 8..10000 pixels"),
        ({"xsize": 100, "zoom": 64.06}, "zoom 64.1 is above the limit of 64 ([limits] max_zoom)"),
        ({"xsize": 100, "zoom": 1e308}, "zoom 1e+308 is above the limit of 64"),
        ({"xsize": 100, "zoom": math.nan}, "zoom must be a finite number, not nan"),
        ({"xsize": 100, "zoom": 2, "segcol": math.inf}, "segcol must be a finite number"),
        ({"xsize": 100, "zoom": 2, "segrow": -2e6}, "segrow -2e+06 is more than 1e+06"),
    ],
)
def test_out_of_range_requests_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(RequestError, match=re.escape(message)):
        plan_view(1000, 800, **kwargs)  # type: ignore[arg-type]


def test_a_very_tall_output_is_rejected() -> None:
    with pytest.raises(RequestError, match="20000 pixels high, above the limit of 10000"):
        plan_view(100, 2000, xsize=1000)


def test_a_huge_negative_zoom_shows_the_whole_frame() -> None:
    """10 · -1e308 overflows to -inf, which rounding cannot turn into an integer."""
    assert plan_view(1000, 800, xsize=100, zoom=-1e308).zoom == 1.0


WIDE = LimitSettings(max_xsize_px=20000)


def test_the_configured_size_limit_is_the_one_applied() -> None:
    """A limit the request parser accepts from the configuration must not be refused here."""
    view = plan_view(20000, 10000, xsize=12000, limits=WIDE)
    assert (view.width_px, view.height_px) == (12000, 6000)
    assert plan_view(1000, 800, xsize=100, ysize=12000, limits=WIDE).height_px == 12000
    assert plan_view(100, 2000, xsize=1000, limits=WIDE).height_px == 20000
    with pytest.raises(RequestError, match=r"xsize 12000 is above the limit of 10000 pixels"):
        plan_view(20000, 10000, xsize=12000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"xsize": 501}, "xsize 501 is above the limit of 500 pixels ([limits] max_xsize_px)"),
        ({"xsize": 100, "ysize": 501}, "ysize 501 is outside 8..500 pixels"),
        ({"xsize": 300}, "gives an image 600 pixels high, above the limit of 500 ([limits]"),
        ({"xsize": 100, "zoom": 2.1}, "zoom 2.1 is above the limit of 2 ([limits] max_zoom)"),
    ],
)
def test_a_tighter_configured_limit_refuses_and_names_itself(
    kwargs: dict[str, float], message: str
) -> None:
    tight = LimitSettings(max_xsize_px=500, max_zoom=2.0)
    with pytest.raises(RequestError, match=re.escape(message)):
        plan_view(100, 200, limits=tight, **kwargs)  # type: ignore[arg-type]


def test_the_configured_zoom_limit_is_the_one_applied() -> None:
    deep = LimitSettings(max_zoom=128.0)
    view = plan_view(4000, 4000, xsize=64, zoom=100, segcol=99, segrow=0, limits=deep)
    assert (view.zoom, view.window_w_px, view.x0_px) == (100.0, 40.0, 3960.0)
    with pytest.raises(RequestError, match=r"zoom 100 is above the limit of 64"):
        plan_view(4000, 4000, xsize=64, zoom=100)


def test_an_empty_frame_is_a_frame_error() -> None:
    with pytest.raises(CorruptFrameError, match="the frame is 0 × 10 pixels"):
        plan_view(0, 10, xsize=100)


def test_reducing_boxes_tile_the_window() -> None:
    lo, hi = axis_bounds(0.0, 10.0, 4, 10)
    # 10 columns into 4 boxes of 2.5: edges at floor(0, 2.5, 5, 7.5, 10).
    assert lo.tolist() == [0, 2, 5, 7]
    assert hi.tolist() == [2, 5, 7, 10]


def test_magnifying_boxes_take_the_nearest_pixel() -> None:
    lo, hi = axis_bounds(0.0, 2.0, 4, 2)  # 2 source pixels onto 4 output pixels
    assert lo.tolist() == [0, 0, 1, 1]
    assert hi.tolist() == [1, 1, 2, 2]


def test_edge_tiles_are_clipped_and_off_image_boxes_are_empty() -> None:
    # Zoom 1.5 on 9 pixels: window 6, segment 1 starts at 6 and runs off the frame at 9.
    # 8 output pixels magnify (step 0.75): centres at 6.375, 7.125, ... 11.625.
    view = plan_view(9, 9, xsize=8, ysize=8, zoom=1.5, segcol=1, segrow=1)
    bounds = box_bounds(view, 9, 9)
    assert bounds.col_lo.tolist() == [6, 7, 7, 8, 9, 9, 9, 9]
    assert bounds.col_hi.tolist() == [7, 8, 8, 9, 9, 9, 9, 9]
    assert np.array_equal(bounds.row_lo, bounds.col_lo)


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(-400, 400),
    window=st.floats(0.5, 600),
    out_px=st.integers(1, 200),
    source_px=st.integers(1, 300),
)
def test_boxes_stay_inside_the_frame_and_in_order(
    start: float, window: float, out_px: int, source_px: int
) -> None:
    lo, hi = axis_bounds(start, window, out_px, source_px)
    assert lo.shape == hi.shape == (out_px,)
    assert np.all((lo >= 0) & (lo <= hi) & (hi <= source_px))
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)
    if window / out_px >= 1.0:  # reducing: neighbours share an edge, nothing read twice
        assert np.array_equal(lo[1:], hi[:-1])
    else:  # magnifying: at most one pixel each
        assert np.all(hi - lo <= 1)


def test_view_is_frozen() -> None:
    view = View(8, 8, 0.0, 0.0, 8.0, 8.0, 1.0, 0.0, 0.0)
    with pytest.raises(AttributeError):
        view.width_px = 9  # type: ignore[misc]
