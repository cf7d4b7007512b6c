"""Colour maps: ramps, and special colours that never occur inside a ramp."""

from __future__ import annotations

import numpy as np
import pytest

from imageserver.errors import RequestError
from imageserver.imaging.colormaps import COLORMAPS, VIRIDIS_KNOTS, get_colormap, ramp_lut


def test_grey_is_the_legacy_white_background_ramp() -> None:
    lut = COLORMAPS["grey"].lut
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[:, 0].tolist() == [255 - i for i in range(256)]
    assert np.array_equal(lut[:, 0], lut[:, 1]) and np.array_equal(lut[:, 0], lut[:, 2])
    assert COLORMAPS["grey"].overload == (255, 0, 0)


def test_inverse_is_black_background() -> None:
    assert COLORMAPS["inverse"].lut[:, 1].tolist() == list(range(256))


def test_heat_runs_black_red_yellow_white() -> None:
    lut = COLORMAPS["heat"].lut
    assert tuple(lut[0]) == (0, 0, 0) and tuple(lut[255]) == (255, 255, 255)
    assert tuple(lut[85]) == (255, 0, 0) and tuple(lut[170]) == (255, 255, 0)
    assert np.all(np.diff(lut.astype(int), axis=0) >= 0)  # every channel only rises


def test_viridis_passes_through_its_knots() -> None:
    lut = COLORMAPS["viridis"].lut
    assert tuple(lut[0]) == VIRIDIS_KNOTS[0] and tuple(lut[255]) == VIRIDIS_KNOTS[-1]
    assert tuple(lut[85]) == VIRIDIS_KNOTS[3]  # 85 = 255 · 3/9


@pytest.mark.parametrize("name", sorted(COLORMAPS))
def test_special_colours_are_distinct_from_the_ramp(name: str) -> None:
    cmap = COLORMAPS[name]
    assert cmap.overload != cmap.masked
    for colour in (cmap.overload, cmap.masked):
        nearest = np.abs(cmap.lut.astype(int) - np.array(colour)).sum(axis=1).min()
        assert nearest >= 40, (name, colour, nearest)


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError, match="read-only"):
        COLORMAPS["grey"].lut[0, 0] = 1


def test_ramp_interpolates_linearly() -> None:
    lut = ramp_lut([(0, 0, 0), (255, 255, 255)])
    assert lut[:, 2].tolist() == list(range(256))


def test_unknown_name_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="known colormaps: grey, heat, inverse, viridis"):
        get_colormap("Grey")
