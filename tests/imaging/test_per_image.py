"""DIALS's per-image definitions on constructed spot lists."""

from __future__ import annotations

import numpy as np
import pytest

from imageserver.imaging.per_image import (
    equal_population_shells,
    ice_ring_d_star_sq,
    ice_ring_selection,
    linear_regression,
    per_image_stats,
    wilson_outliers,
)


def test_the_first_ice_rings_are_those_of_hexagonal_ice() -> None:
    rings = np.unique(np.round(ice_ring_d_star_sq(), 10))
    # d*² of (100), (002), (101), (102), (110) for a = 4.498, c = 7.338 Å (DIALS's cell)
    assert rings[:5].tolist() == pytest.approx(
        [0.0659021881, 0.0742855899, 0.0844735856, 0.140187778, 0.1977065643]
    )
    assert not np.isclose(rings, 1 / 7.338**2).any()  # (001) is absent in P6₃/mmc


def test_ice_ring_selection_is_half_the_width_either_side() -> None:
    ring = 0.0659021881
    selected = ice_ring_selection(np.array([ring, ring + 0.00199, ring + 0.00201, 0.11]))
    assert selected.tolist() == [True, True, False, False]


def test_few_spots_off_the_ice_give_minus_one() -> None:
    d = np.array([3.0, 3.5, 4.5, 5.0, 2.5, 2.2, 2.1, 2.0, 6.0, 7.0])
    stats = per_image_stats(d, np.full(10, 100.0))
    assert (stats.n_spots_total, stats.n_spots_no_ice, stats.n_spots_4A) == (10, 10, 4)
    assert stats.total_intensity == 1000.0
    assert stats.estimated_d_min == stats.d_min_distl_method_1 == -1.0
    assert stats.noisiness_method_1 == stats.noisiness_method_2 == -1.0


def test_ice_spots_count_in_the_total_but_not_in_the_intensity() -> None:
    ice_d = 1 / np.sqrt(0.0659021881)
    stats = per_image_stats(np.array([ice_d, 3.0, np.inf]), np.array([50.0, 7.0, 9.0]))
    assert (stats.n_spots_total, stats.n_spots_no_ice) == (2, 1)  # the beam spot is dropped
    assert stats.total_intensity == 7.0
    no_filter = per_image_stats(np.array([ice_d, 3.0]), np.array([50.0, 7.0]), filter_ice=False)
    assert no_filter.n_spots_no_ice == 2 and no_filter.total_intensity == 57.0


def test_resolution_estimates_follow_a_falling_spot_density() -> None:
    rng = np.random.default_rng(3)
    d_star = rng.uniform(0.05, 0.5, 400) ** (1 / 3) * 0.5 / 0.5 ** (1 / 3)  # uniform in d*³
    intensity = np.exp(6 - 20 * d_star**2) * rng.exponential(1, 400) + 1
    stats = per_image_stats(1 / d_star, intensity)
    assert stats.n_spots_total == 400
    assert 2.0 <= stats.estimated_d_min <= 4.0
    assert 2.0 <= stats.d_min_distl_method_1 <= 5.0 and stats.d_min_distl_method_2 >= 2.0
    assert 0 <= stats.noisiness_method_1 <= 1 and 0 <= stats.noisiness_method_2 <= 1


def test_equal_population_shells_leave_the_first_spot_on_their_edge() -> None:
    d_star_sq = 1 / np.arange(1.0, 101.0) ** 2
    shells = equal_population_shells(d_star_sq)
    assert len(shells) == 5 and shells[0][1] == 100.0 and shells[-1][0] == 1.0
    assert shells[0][0] == 81.0  # the 20th spot from the low-resolution end


def test_wilson_outliers_reject_iteratively() -> None:
    intensity = np.array([1.0] * 20 + [30.0, 400.0])
    outliers = wilson_outliers(intensity, np.zeros(22, dtype=bool))
    assert outliers.tolist() == [False] * 20 + [True, True]


def test_linear_regression_matches_least_squares_and_its_degenerate_cases() -> None:
    slope, intercept = linear_regression([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    assert (slope, intercept) == pytest.approx((2.0, 1.0))
    assert linear_regression([1.0, 1.0], [0.0, 3.0]) == (0.0, 0.0)
    assert linear_regression([0.0, 1.0], [2.0, 2.0]) == (0.0, 2.0)
