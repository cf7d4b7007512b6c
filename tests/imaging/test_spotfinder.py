"""The compiled spot finder equals the plain NumPy reference, and DIALS's filters act."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imageserver.errors import AnalysisError, RequestError
from imageserver.formats.base import Frame, FrameMeta
from imageserver.imaging.reduce import row_blocks
from imageserver.imaging.spotfinder import (
    SCRATCH,
    SpotFinderParams,
    Spots,
    clean_frame,
    find_spots,
    strong_pixels,
)
from imageserver.imaging.spotfinder_reference import (
    clean_reference,
    spots_reference,
    strong_reference,
)
from imageserver.threads import THREADS


def make_frame(
    shape: tuple[int, int] = (96, 120),
    *,
    seed: int = 1,
    dtype: type = np.uint32,
    n_spots: int = 25,
    saturation: int | None = None,
    with_mask: bool = False,
) -> Frame:
    """Poisson background with Gaussian spots, some at the edges, a gap and bad pixels."""
    rng = np.random.default_rng(seed)
    height, width = shape
    expected = np.full(shape, 3.0)
    yy, xx = np.mgrid[0:height, 0:width]
    centres = rng.uniform((-1, -1), (height + 1, width + 1), size=(n_spots, 2))
    for (cy, cx), peak in zip(centres, rng.uniform(20, 400, n_spots), strict=True):
        expected += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2**2))
    pixels: np.ndarray = rng.poisson(expected).astype(dtype)
    top = np.iinfo(dtype).max
    pixels[:, width // 2 : width // 2 + 3] = top  # a module gap
    pixels[rng.integers(0, height, 20), rng.integers(0, width, 20)] = top  # bad pixels
    mask = None
    if with_mask:
        mask = (rng.random(shape) < 0.02).astype(np.uint8)
    meta = FrameMeta(
        format_name="test", width_px=width, height_px=height, bit_depth=32,
        saturation_value=saturation,
    )  # fmt: skip
    return Frame(pixels=pixels, mask=mask, meta=meta, number=1, path=Path("synthetic"))


def assert_same_spots(ours: Spots, reference: Spots) -> None:
    assert ours.n_strong_px == reference.n_strong_px
    assert len(ours) == len(reference) > 0
    np.testing.assert_array_equal(ours.x_px, reference.x_px)
    np.testing.assert_array_equal(ours.y_px, reference.y_px)
    np.testing.assert_array_equal(ours.intensity, reference.intensity)
    np.testing.assert_array_equal(ours.size_px, reference.size_px)
    np.testing.assert_array_equal(ours.peak_x_px, reference.peak_x_px)
    np.testing.assert_array_equal(ours.peak_y_px, reference.peak_y_px)


@pytest.mark.parametrize("algorithm", ["dispersion_extended", "dispersion"])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spots_equal_the_reference(algorithm: str, dtype: type, seed: int) -> None:
    frame = make_frame(seed=seed, dtype=dtype, saturation=300, with_mask=seed == 2)
    params = SpotFinderParams(algorithm=algorithm)
    assert_same_spots(find_spots(frame, params), spots_reference(frame, params))


@pytest.mark.parametrize("algorithm", ["dispersion_extended", "dispersion"])
def test_spots_equal_the_reference_across_thread_blocks(algorithm: str) -> None:
    """A frame large enough to be split into row blocks over the threads: spots that cross
    a block's edge and windows that reach into the next block."""
    frame = make_frame((700, 500), seed=11, n_spots=400, saturation=300, with_mask=True)
    assert row_blocks(700, frame.pixels.size) != [(0, 700)] or THREADS == 1
    params = SpotFinderParams(algorithm=algorithm)
    assert_same_spots(find_spots(frame, params), spots_reference(frame, params))


@pytest.mark.parametrize("algorithm", ["dispersion_extended", "dispersion"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (200, 2), (7, 7), (31, 17)])
def test_strong_maps_equal_the_reference_on_edge_shapes(
    algorithm: str, shape: tuple[int, int]
) -> None:
    frame = make_frame(shape, n_spots=3)
    params = SpotFinderParams(algorithm=algorithm)
    clean = clean_frame(frame)
    np.testing.assert_array_equal(clean, clean_reference(frame))
    strong = strong_pixels(clean, params)
    expected = strong_reference(clean, params)
    np.testing.assert_array_equal(strong, np.flatnonzero(expected))


def test_non_default_parameters_equal_the_reference() -> None:
    frame = make_frame(seed=5)
    for params in (
        SpotFinderParams(gain=1.7, global_threshold=10, kernel_size_px=2),
        SpotFinderParams(algorithm="dispersion", gain=0.8, min_local=20, sigma_strong=2),
        # gain 1 takes the root-free screen: zero sigmas make c and d zero, a wide window
        # makes large sums
        SpotFinderParams(algorithm="dispersion", sigma_background=0, sigma_strong=0),
        SpotFinderParams(kernel_size_px=6, sigma_background=2.5, sigma_strong=1.5),
    ):
        assert_same_spots(find_spots(frame, params), spots_reference(frame, params))


def test_unusable_pixels_are_never_strong() -> None:
    frame = make_frame(seed=4, saturation=200, with_mask=True)
    clean = clean_frame(frame)
    pixels = frame.pixels
    assert frame.mask is not None
    unusable = (pixels == np.iinfo(pixels.dtype).max) | (pixels >= 200) | (frame.mask != 0)
    np.testing.assert_array_equal(clean < 0, unusable)
    strong = strong_pixels(clean, SpotFinderParams())
    assert strong.size > 0
    assert not unusable.flat[strong].any()


def test_a_lone_spot_has_its_weighted_centroid_and_summed_counts() -> None:
    pixels = np.ones((40, 40), dtype=np.uint32)
    pixels[20, 10:13] = [100, 300, 100]
    pixels[21, 11] = 100
    meta = FrameMeta(format_name="test", width_px=40, height_px=40, bit_depth=32)
    frame = Frame(pixels=pixels, mask=None, meta=meta, number=1, path=Path("lone"))
    spots = find_spots(frame, SpotFinderParams(algorithm="dispersion"))
    assert len(spots) == 1
    assert spots.size_px.tolist() == [4]
    assert spots.intensity.tolist() == [600.0]
    assert spots.x_px[0] == pytest.approx((100 * 10 + 300 * 11 + 100 * 12 + 100 * 11) / 600)
    assert spots.y_px[0] == pytest.approx((500 * 20 + 100 * 21) / 600)
    assert (spots.peak_x_px[0], spots.peak_y_px[0]) == (11, 20)


def test_diagonal_neighbours_are_separate_spots_four_connectivity() -> None:
    pixels = np.ones((40, 40), dtype=np.uint32)
    pixels[10, 10] = pixels[11, 11] = pixels[12, 12] = 500
    meta = FrameMeta(format_name="test", width_px=40, height_px=40, bit_depth=32)
    frame = Frame(pixels=pixels, mask=None, meta=meta, number=1, path=Path("diag"))
    params = SpotFinderParams(algorithm="dispersion", min_spot_size_px=1)
    assert len(find_spots(frame, params)) == 3
    assert len(find_spots(frame, SpotFinderParams(algorithm="dispersion"))) == 0  # < 3 px


def test_size_filters_follow_the_parameters() -> None:
    frame = make_frame(seed=7)
    everything = find_spots(frame, SpotFinderParams(min_spot_size_px=1, max_separation_px=99))
    small = find_spots(frame, SpotFinderParams(min_spot_size_px=1, max_spot_size_px=4,
                                               max_separation_px=99))  # fmt: skip
    assert len(small) == int((everything.size_px <= 4).sum()) < len(everything)
    default = find_spots(frame)
    assert default.size_px.min() >= 3


def test_max_separation_drops_spots_whose_peak_is_far_from_the_centroid() -> None:
    pixels = np.ones((40, 60), dtype=np.uint32)
    pixels[20, 10:17] = [400, 200, 200, 200, 200, 200, 200]  # peak 2.6 px from the centroid
    pixels[20, 30:33] = 50
    meta = FrameMeta(format_name="test", width_px=60, height_px=40, bit_depth=32)
    frame = Frame(pixels=pixels, mask=None, meta=meta, number=1, path=Path("sep"))
    loose = find_spots(frame, SpotFinderParams(algorithm="dispersion", max_separation_px=10))
    strict = find_spots(frame, SpotFinderParams(algorithm="dispersion"))
    assert len(strict) == len(loose) - 1


def test_too_many_strong_pixels_is_refused_as_dials_does() -> None:
    frame = make_frame(seed=8, n_spots=60)
    with pytest.raises(AnalysisError, match="strong pixels"):
        find_spots(frame, SpotFinderParams(max_strong_pixel_fraction=0.001))


@pytest.mark.parametrize(
    "field, value",
    [("algorithm", "otsu"), ("min_local", 1), ("sigma_strong", -1.0), ("gain", 0.0),
     ("max_strong_pixel_fraction", 2.0), ("max_spot_size_px", 2)],
)  # fmt: skip
def test_bad_parameters_are_request_errors(field: str, value: object) -> None:
    with pytest.raises(RequestError, match=field if field != "algorithm" else "otsu"):
        SpotFinderParams(**{field: value})  # type: ignore[arg-type]


def test_work_arrays_are_reused_and_leave_nothing_behind() -> None:
    """The second frame of a shape gets the first one's arrays back, stale contents and all,
    and still equals the reference."""
    first, second = make_frame(seed=12, n_spots=80), make_frame(seed=13, with_mask=True)
    find_spots(first)
    kept = SCRATCH.take(first.pixels.shape, np.int32)
    SCRATCH.give(kept)
    assert_same_spots(find_spots(second), spots_reference(second))
    assert SCRATCH.take(first.pixels.shape, np.int32) is kept
