"""Percentile levels: exactly numpy's "lower" percentiles of the usable pixels, whatever the
dtype, the bucket the percentile falls in, or the split over threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.formats import open_source
from imageserver.imaging.contrast import (
    BLACK_PERCENTILE,
    WHITE_PERCENTILE,
    Levels,
    choose_levels,
    map_contrast,
    percentile_levels,
)
from imageserver.imaging.geometry import View
from imageserver.imaging.reduce import Flags, Reduced
from imageserver.imaging.stats import ViewStats
from imageserver.render import ViewSpec, reduce_view

OK, MASKED, SATURATED = int(Flags.OK), int(Flags.MASKED), int(Flags.SATURATED)


def reduced_of(values: npt.NDArray[np.generic], flags: npt.NDArray[np.uint8]) -> Reduced:
    view = View(values.shape[1], values.shape[0], 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    return Reduced(values, flags, 0, view)  # type: ignore[arg-type]


def reference(reduced: Reduced) -> Levels | None:
    usable = reduced.values[reduced.flags == OK]
    if usable.size == 0:
        return None
    white, black = np.percentile(usable, [WHITE_PERCENTILE, BLACK_PERCENTILE], method="lower")
    return Levels(white=int(white), black=int(black))


def stats_with(mean: float, stddev: float) -> ViewStats:
    return ViewStats(10, mean, stddev, mean, 0, 100, 0, None, ())


@settings(max_examples=300, deadline=None)
@given(
    dtype=st.sampled_from([np.uint16, np.uint32]),
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    top=st.sampled_from([3, 300, 70_000, 2**20, 2**32 - 1]),
    usable_fraction=st.floats(0.0, 1.0),
)
def test_equal_to_numpy_percentiles(
    dtype: type, seed: int, shape: tuple[int, int], top: int, usable_fraction: float
) -> None:
    rng = np.random.default_rng(seed)
    top = min(top, int(np.iinfo(dtype).max))
    values = rng.integers(0, top, size=shape, endpoint=True).astype(dtype)
    flags = np.where(rng.random(shape) < usable_fraction, OK, MASKED).astype(np.uint8)
    flags[rng.random(shape) < 0.05] = SATURATED
    reduced = reduced_of(values, flags)
    assert percentile_levels(reduced) == reference(reduced)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_a_large_view_over_threads_equals_numpy(dtype: type) -> None:
    rng = np.random.default_rng(7)
    values = rng.poisson(4.0, size=(1077, 1024)).astype(dtype)
    spots = rng.random(values.shape) < 0.01
    values[spots] = rng.integers(100, 60_000, size=int(spots.sum()))
    flags = np.zeros(values.shape, np.uint8)
    flags[:, 500:510] = MASKED
    reduced = reduced_of(values, flags)
    assert percentile_levels(reduced) == reference(reduced)


def test_percentiles_in_two_different_high_buckets() -> None:
    """White among values ≥ 2¹⁶ and black in a bucket of its own: two more passes."""
    values = np.concatenate(
        [np.full(50, 5), np.arange(70_000, 70_950), np.full(10, 3_000_000)]
    ).astype(np.uint32)
    reduced = reduced_of(values.reshape(1, -1), np.zeros((1, values.size), np.uint8))
    levels = percentile_levels(reduced)
    assert levels == reference(reduced)
    assert levels is not None and levels.white >= 70_000 and levels.black == 3_000_000


def test_saturated_and_masked_pixels_are_left_out() -> None:
    values = np.array([[1, 2, 3, 4, 60_000, 65_000]], np.uint16)
    flags = np.array([[OK, OK, OK, OK, SATURATED, MASKED]], np.uint8)
    assert percentile_levels(reduced_of(values, flags)) == Levels(white=1, black=3)


def test_no_usable_pixel_gives_none_and_choose_levels_falls_back_to_legacy() -> None:
    reduced = reduced_of(np.zeros((2, 2), np.uint16), np.full((2, 2), MASKED, np.uint8))
    assert percentile_levels(reduced) is None
    levels = choose_levels(stats_with(10.7, 2.5), 0, -1, mode="percentile", reduced=reduced)
    assert levels == Levels(white=8, black=13)


def test_requested_levels_win_and_black_stays_above_white() -> None:
    values = np.arange(1000, dtype=np.uint32).reshape(10, 100)
    reduced = reduced_of(values, np.zeros(values.shape, np.uint8))
    stats = stats_with(500.0, 10.0)

    def levels(contrast: int, wval: int) -> Levels:
        return choose_levels(stats, contrast, wval, mode="percentile", reduced=reduced)

    assert levels(0, -1) == Levels(white=99, black=994)
    assert levels(50, -1) == Levels(white=99, black=100)  # black 50 ≤ white → white + 1
    assert levels(0, 7) == Levels(white=7, black=994)
    assert levels(600, 7) == Levels(white=7, black=600)
    flat = reduced_of(np.full((4, 4), 9, np.uint16), np.zeros((4, 4), np.uint8))
    assert choose_levels(stats, 0, -1, mode="percentile", reduced=flat) == Levels(9, 10)


def test_mode_is_checked_and_percentiles_need_the_view() -> None:
    with pytest.raises(ValueError, match="legacy, percentile"):
        choose_levels(stats_with(1.0, 1.0), 0, -1, mode="median")
    with pytest.raises(ValueError, match="reduced view"):
        choose_levels(stats_with(1.0, 1.0), 0, -1, mode="percentile")
    # Both levels given: nothing automatic is computed, so no view is needed.
    assert choose_levels(stats_with(1.0, 1.0), 9, 2, mode="percentile") == Levels(2, 9)


def test_a_real_pattern_shows_background_and_spots(shared_data: Path) -> None:
    """Legacy levels paint this crystal pattern almost white; percentile ones do not."""
    path = shared_data / "pilatus6m_thau_3_2_0001.cbf.bz2"
    view = reduce_view(open_source(path, 1), ViewSpec(path=path, xsize=1024))
    usable = view.reduced.flags == OK
    grey = {
        mode: map_contrast(
            view.reduced,
            choose_levels(view.stats, 0, -1, mode=mode, reduced=view.reduced),
        )[..., 0][usable]
        for mode in ("legacy", "percentile")
    }

    def share(mode: str, low: int, high: int) -> float:
        return float(np.mean((grey[mode] >= low) & (grey[mode] <= high)))

    # Legacy (white 0, black 167): the background of 2–6 counts is all near white, only
    # the spots show. Percentile (white 2, black 15): a grey background, black spots.
    assert share("legacy", 241, 255) > 0.8 and share("legacy", 0, 127) < 0.001
    assert share("percentile", 241, 255) < 0.3 and share("percentile", 0, 127) > 0.1
    assert 0.001 < share("percentile", 0, 14) < 0.02
