"""Levels (legacy §5.1 rules) and the mapping of reduced values to colour."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.errors import RequestError
from imageserver.imaging.colormaps import BLUE_GREY, COLORMAPS, CYAN, RED, rgb_to_ycc
from imageserver.imaging.contrast import Levels, choose_levels, map_contrast, map_contrast_planes
from imageserver.imaging.geometry import View
from imageserver.imaging.reduce import Flags, Reduced
from imageserver.imaging.stats import ViewStats

OK, MASKED, SATURATED = Flags.OK, Flags.MASKED, Flags.SATURATED


def stats_with(mean: float, stddev: float) -> ViewStats:
    return ViewStats(10, mean, stddev, mean, 0, 100, 0, None, ())


def reduced_of(values: npt.ArrayLike, flags: npt.ArrayLike, dtype: type = np.uint32) -> Reduced:
    array = np.array(values, dtype=dtype)
    view = View(array.shape[1], array.shape[0], 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    return Reduced(array, np.array(flags, dtype=np.uint8), 0, view)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("contrast", "wval", "expected"),
    [
        (50, 3, Levels(white=3, black=50)),  # both given
        (0, 3, Levels(white=3, black=13)),  # black automatic: int(10.7 + 2.5)
        (-1, -1, Levels(white=8, black=13)),  # both automatic: int(10.7 ∓ 2.5)
        (50, -1, Levels(white=8, black=50)),
        (5, 9, Levels(white=9, black=10)),  # black ≤ white → white + 1
        (1, -100, Levels(white=8, black=9)),
    ],
)
def test_levels_follow_the_legacy_rules(contrast: int, wval: int, expected: Levels) -> None:
    assert choose_levels(stats_with(10.7, 2.5), contrast, wval) == expected


def test_automatic_white_below_zero_is_clamped_to_zero() -> None:
    assert choose_levels(stats_with(1.0, 4.0), 0, -1) == Levels(white=0, black=5)
    assert choose_levels(stats_with(0.0, 0.0), 0, -1) == Levels(white=0, black=1)


def test_grey_map_by_hand() -> None:
    reduced = reduced_of([[0, 5, 10, 14, 15, 20, 7, 99]], [[OK] * 6 + [MASKED, SATURATED]])
    rgb = map_contrast(reduced, Levels(white=5, black=15))
    assert rgb.shape == (1, 8, 3) and rgb.dtype == np.uint8
    # indices 0, 0, ⌊255·5/10⌋ = 127, ⌊255·9/10⌋ = 229, 255, 255; grey is 255 − index.
    assert rgb[0, :6, 0].tolist() == [255, 255, 128, 26, 0, 0]
    assert np.all(rgb[0, :6, 0:1] == rgb[0, :6, :])  # grey
    assert tuple(rgb[0, 6]) == BLUE_GREY
    assert tuple(rgb[0, 7]) == RED


def test_each_map_uses_its_own_ramp_and_special_colours() -> None:
    reduced = reduced_of([[0, 1000, 3, 3]], [[OK, OK, MASKED, SATURATED]], dtype=np.uint16)
    for name, cmap in COLORMAPS.items():
        rgb = map_contrast(reduced, Levels(white=0, black=1), name)
        assert tuple(rgb[0, 0]) == tuple(cmap.lut[0]), name
        assert tuple(rgb[0, 1]) == tuple(cmap.lut[255]), name
        assert tuple(rgb[0, 2]) == cmap.masked, name
        assert tuple(rgb[0, 3]) == cmap.overload, name
    assert COLORMAPS["heat"].overload == CYAN


def test_unknown_colormap_names_the_known_ones() -> None:
    reduced = reduced_of([[1]], [[OK]])
    with pytest.raises(RequestError, match="unknown colormap 'jet'; known colormaps: grey, heat"):
        map_contrast(reduced, Levels(0, 1), "jet")


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 2**32 - 2), min_size=1, max_size=50),
    white=st.integers(0, 2**34),
    span=st.integers(1, 2**50),
)
def test_index_is_the_exact_integer_quotient(values: list[int], white: int, span: int) -> None:
    """The kernel estimates in float64 and corrects; Python's integers are the truth."""
    levels = Levels(white=white, black=white + span)
    rgb = map_contrast(reduced_of([values], [[OK] * len(values)]), levels, "inverse")
    # Levels above 32-bit values are clipped in map_contrast without changing any pixel.
    expected = [0 if v <= white else min(255, 255 * (v - white) // span) for v in values]
    assert rgb[0, :, 0].tolist() == expected


def test_levels_far_beyond_the_data_do_not_overflow() -> None:
    reduced = reduced_of([[0, 2**32 - 2]], [[OK, OK]])
    rgb = map_contrast(reduced, Levels(white=10**30, black=10**40), "inverse")
    assert rgb[0, :, 0].tolist() == [0, 0]
    rgb = map_contrast(reduced, Levels(white=0, black=10**40), "inverse")
    assert rgb[0, :, 0].tolist() == [0, 0]


def test_large_image_split_over_threads_matches_row_by_row() -> None:
    rng = np.random.default_rng(2)
    values = rng.integers(0, 100, (1100, 1000)).astype(np.uint16)
    flags = rng.choice(np.array([OK, MASKED, SATURATED], np.uint8), size=values.shape)
    levels = Levels(white=10, black=90)
    whole = map_contrast(reduced_of(values, flags, np.uint16), levels, "heat")
    top = map_contrast(reduced_of(values[:3], flags[:3], np.uint16), levels, "heat")
    bottom = map_contrast(reduced_of(values[-3:], flags[-3:], np.uint16), levels, "heat")
    np.testing.assert_array_equal(whole[:3], top)
    np.testing.assert_array_equal(whole[-3:], bottom)


def test_planes_hold_the_rgb_image_or_its_ycbcr_below_the_rows_left_for_a_banner() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 60, (5, 7)).astype(np.uint32)
    flags = rng.choice(np.array([OK, MASKED, SATURATED], np.uint8), size=values.shape)
    reduced, levels = reduced_of(values, flags), Levels(white=10, black=50)
    for name in COLORMAPS:
        rgb = map_contrast(reduced, levels, name)
        rgb_planes = map_contrast_planes(reduced, levels, name, space="rgb", top_rows=2)
        ycc_planes = map_contrast_planes(reduced, levels, name, top_rows=2)
        assert rgb_planes.shape == ycc_planes.shape == (3, 7, 7)
        np.testing.assert_array_equal(np.moveaxis(rgb_planes[:, 2:], 0, -1), rgb)
        np.testing.assert_array_equal(np.moveaxis(ycc_planes[:, 2:], 0, -1), rgb_to_ycc(rgb))


def test_ycbcr_of_greys_is_exact_and_of_colours_round_trips() -> None:
    greys = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    ycc = rgb_to_ycc(greys)
    assert ycc[:, 0].tolist() == list(range(256))
    assert np.all(ycc[:, 1:] == 128)
    # JFIF's inverse (the decoder's), from the spec's coefficients.
    colours = np.array([RED, CYAN, BLUE_GREY, (0x44, 0x01, 0x54)], dtype=np.uint8)
    y, cb, cr = (rgb_to_ycc(colours).astype(float) - [0, 128, 128]).T
    back = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    assert np.abs(np.clip(np.rint(back), 0, 255) - colours).max() <= 1
