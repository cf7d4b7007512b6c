"""View statistics: hand-computed moments, shells and spots; equal to the NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.imaging.geometry import View
from imageserver.imaging.reduce import Flags, Reduced
from imageserver.imaging.reference import view_stats_reference
from imageserver.imaging.stats import N_SHELLS, ViewStats, shell_geometry, view_stats


def reduced_of(
    values: npt.ArrayLike,
    flags: npt.ArrayLike | None = None,
    dtype: type = np.uint16,
    view: View | None = None,
    saturated: int = 0,
) -> Reduced:
    array = np.ascontiguousarray(np.array(values, dtype=dtype))
    height, width = array.shape
    flag_array = np.zeros(array.shape, np.uint8) if flags is None else np.array(flags, np.uint8)
    view = view or View(width, height, 0.0, 0.0, float(width), float(height), 1.0, 0.0, 0.0)
    return Reduced(array, np.ascontiguousarray(flag_array), saturated, view)  # type: ignore[arg-type]


def test_moments_by_hand_without_a_beam() -> None:
    stats = view_stats(reduced_of([[1, 2], [3, 4]], saturated=7), None, None)
    assert (stats.n, stats.min, stats.max, stats.saturated) == (4, 1, 4, 7)
    assert stats.mean == 2.5
    assert stats.rms == pytest.approx(math.sqrt(30 / 4))
    assert stats.stddev == pytest.approx(math.sqrt(1.25))
    assert stats.spots is None and stats.shells == ()


def test_masked_pixels_are_left_out_and_saturated_ones_kept() -> None:
    flags = [[Flags.MASKED, Flags.SATURATED], [Flags.OK, Flags.MASKED]]
    stats = view_stats(reduced_of([[100, 6], [2, 0]], flags), None, None)
    assert (stats.n, stats.mean, stats.min, stats.max) == (2, 4.0, 2, 6)


def test_empty_view_reports_zeros_not_minus_one() -> None:
    stats = view_stats(reduced_of([[0, 0]], [[Flags.MASKED] * 2]), 0.0, 0.0)
    assert (stats.n, stats.mean, stats.stddev, stats.rms, stats.min, stats.max) == (
        0, 0.0, 0.0, 0.0, 0, 0
    )  # fmt: skip
    assert stats.spots == 0
    assert len(stats.shells) == N_SHELLS and all(s.n == 0 for s in stats.shells)


def test_shells_are_equal_steps_of_r_squared_from_the_beam() -> None:
    # Beam at the centre of the middle pixel of a 5 × 5 view: d² at pixel centres is
    # 0 (1 px), 1 (4), 2 (4), 4 (4), 5 (8), 8 (4); 16 shells over 0..8 → 2 shells per unit.
    reduced = reduced_of(np.zeros((5, 5)))
    stats = view_stats(reduced, 2.0, 2.0)
    counts = {i: s.n for i, s in enumerate(stats.shells) if s.n}
    assert counts == {0: 1, 2: 4, 4: 4, 8: 4, 10: 8, 15: 4}


def test_spots_are_pixels_above_mean_plus_one_and_a_half_rms_of_their_shell() -> None:
    values = np.zeros((5, 5), dtype=np.uint16)
    values[0, 1] = 40  # d² = 5 shell (8 pixels): mean 5, rms √200 ≈ 14.1 → 40 − 5 > 21.2
    values[2, 2] = 1000  # alone in shell 0: 1000 − 1000 = 0 is not a spot
    stats = view_stats(reduced_of(values), 2.0, 2.0)
    shell = stats.shells[10]
    assert (shell.n, shell.mean, shell.max) == (8, 5.0, 40)
    assert shell.rms == pytest.approx(math.sqrt(200))
    assert shell.stddev == pytest.approx(math.sqrt((35**2 + 7 * 25) / 8))
    assert stats.spots == 1


def test_beam_centre_is_mapped_through_the_view() -> None:
    # Source 40 × 20 shown at 10 × 5 from x0 = 8: beam at source pixel (17.5, 9.5) has
    # edge coordinates (18, 10) → output ((18 − 8)/4, 10/4) = (2.5, 2.5).
    view = View(10, 5, 8.0, 0.0, 40.0, 20.0, 1.0, 0.0, 0.0)
    geometry = shell_geometry(reduced_of(np.zeros((5, 10)), view=view), 17.5, 9.5)
    assert (geometry.beam_x, geometry.beam_y) == (2.5, 2.5)
    assert geometry.d2_min == 0.0
    assert geometry.d2_max == 7.0**2 + 2.0**2  # to the centre of pixel (0, 9)


def test_beam_off_the_view_measures_from_the_nearest_pixel_centre() -> None:
    view = View(4, 2, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0, 0.0)
    geometry = shell_geometry(reduced_of(np.zeros((2, 4)), view=view), 9.5, 0.5)
    assert geometry.beam_x == 10.0
    assert geometry.d2_min == 6.5**2  # centre of pixel column 3 is at 3.5
    assert geometry.d2_max == 9.5**2 + 0.5**2


@pytest.mark.parametrize("beam", [math.nan, math.inf, 1e12])
def test_unusable_beam_centre_means_no_shells(beam: float) -> None:
    stats = view_stats(reduced_of([[1, 2]]), beam, 0.0)
    assert stats.spots is None and stats.shells == ()
    assert stats.n == 2


def test_32_bit_values_near_3e9_give_the_true_stddev() -> None:
    rng = np.random.default_rng(5)
    values = (3_000_000_000 + rng.integers(0, 1000, (300, 200))).astype(np.uint32)
    stats = view_stats(reduced_of(values, dtype=np.uint32), 100.0, 150.0)
    expected = values.astype(np.float64)
    assert stats.mean == pytest.approx(expected.mean(), rel=1e-15)
    assert stats.stddev == pytest.approx(expected.std(), rel=1e-9)
    assert stats.rms == pytest.approx(math.sqrt(np.mean(expected**2)), rel=1e-12)
    assert (stats.min, stats.max) == (int(values.min()), int(values.max()))


def assert_same_stats(got: ViewStats, expected: ViewStats) -> None:
    for name in ("n", "min", "max", "saturated", "spots"):
        assert getattr(got, name) == getattr(expected, name), name
    for name in ("mean", "stddev", "rms"):
        assert getattr(got, name) == pytest.approx(getattr(expected, name), rel=1e-9, abs=1e-9)
    assert len(got.shells) == len(expected.shells)
    for mine, theirs in zip(got.shells, expected.shells, strict=True):
        assert (mine.n, mine.min, mine.max) == (theirs.n, theirs.min, theirs.max)
        assert mine.mean == pytest.approx(theirs.mean, rel=1e-9, abs=1e-9)
        assert mine.rms == pytest.approx(theirs.rms, rel=1e-9, abs=1e-9)
        assert mine.stddev == pytest.approx(theirs.stddev, rel=1e-9, abs=1e-9)


@st.composite
def reduced_views(draw: st.DrawFn) -> tuple[Reduced, float | None, float | None]:
    height, width = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Values below 2**16 keep every sum exact in float64, so spot counts must agree exactly.
    values = rng.integers(0, draw(st.sampled_from([2, 50, 65535])), (height, width), endpoint=True)
    values[rng.random((height, width)) < 0.01] = 60000  # a few bright pixels
    flags = rng.choice(
        np.array([Flags.OK, Flags.MASKED, Flags.SATURATED], dtype=np.uint8),
        size=(height, width),
        p=draw(st.sampled_from([(1.0, 0.0, 0.0), (0.8, 0.15, 0.05), (0.0, 1.0, 0.0)])),
    )
    source_w, source_h = draw(st.floats(1, 500)), draw(st.floats(1, 500))
    view = View(width, height, draw(st.floats(-100, 400)), draw(st.floats(-100, 400)),
                source_w, source_h, 2.0, 0.0, 0.0)  # fmt: skip
    has_beam = draw(st.booleans())
    beam_x = draw(st.floats(-300, 800)) if has_beam else None
    beam_y = draw(st.floats(-300, 800)) if has_beam else None
    return reduced_of(values, flags, view=view, saturated=draw(st.integers(0, 9))), beam_x, beam_y


@settings(max_examples=300, deadline=None)
@given(reduced_views())
def test_numba_stats_equal_reference(case: tuple[Reduced, float | None, float | None]) -> None:
    reduced, beam_x, beam_y = case
    assert_same_stats(
        view_stats(reduced, beam_x, beam_y), view_stats_reference(reduced, beam_x, beam_y)
    )


def test_large_view_split_over_threads_equals_reference() -> None:
    rng = np.random.default_rng(11)
    values = rng.poisson(20.0, (1100, 1000)).astype(np.uint32)
    values[rng.random(values.shape) < 0.001] = 5000
    flags = (rng.random(values.shape) < 0.05).astype(np.uint8)
    reduced = reduced_of(values, flags, dtype=np.uint32)
    assert_same_stats(
        view_stats(reduced, 480.3, 610.0), view_stats_reference(reduced, 480.3, 610.0)
    )
