"""write_eiger_series: the files, layout and content a Dectris DCU 1.8 detector would write."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from imageserver.formats.eiger import EigerReader
from imageserver.formats.handles import HandleCache, LayoutCache
from imageserver.sampledata.eiger import (
    MASK_DEAD,
    MASK_GAP,
    MASK_HOT,
    SATURATION_16BIT,
    SATURATION_32BIT,
    eiger_pixel_mask,
    write_eiger_series,
)
from imageserver.sampledata.pattern import centred_geometry, module_gaps

SMALL = centred_geometry(1100, 600, 75e-6)
DETECTOR = "/entry/instrument/detector"
SPECIFIC = f"{DETECTOR}/detectorSpecific"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 32-bit frames, default split: data files of 3 and 2 frames."""
    return write_eiger_series(
        tmp_path_factory.mktemp("writer"), "scan_7", geometry=SMALL, n_frames=5
    )


def test_file_names_and_frame_split(series: Path) -> None:
    assert series.name == "scan_7_master.h5"
    assert sorted(p.name for p in series.parent.iterdir()) == [
        "scan_7_data_000001.h5",
        "scan_7_data_000002.h5",
        "scan_7_master.h5",
    ]
    ranges = []
    for name in ("scan_7_data_000001.h5", "scan_7_data_000002.h5"):
        with h5py.File(series.with_name(name), "r") as f:
            data = f["/entry/data/data"]
            ranges.append((int(data.attrs["image_nr_low"]), int(data.attrs["image_nr_high"])))
            assert data.shape[0] == ranges[-1][1] - ranges[-1][0] + 1
    assert ranges == [(1, 3), (4, 5)]


def test_master_links_each_data_file_as_dectris_does(series: Path) -> None:
    with h5py.File(series, "r") as f:
        links = {name: f["/entry/data"].get(name, getlink=True) for name in f["/entry/data"]}
        assert f["/entry"].attrs["NX_class"] == b"NXentry"
        assert f["/entry/data"].attrs["NX_class"] == b"NXdata"
        assert f["/entry/definition"][()] == b"NXmx"

    assert sorted(links) == ["data_000001", "data_000002"]
    assert [(link.filename, link.path) for link in links.values()] == [
        ("scan_7_data_000001.h5", "/entry/data/data"),
        ("scan_7_data_000002.h5", "/entry/data/data"),
    ]


def test_master_metadata_values_types_and_units(series: Path) -> None:
    with h5py.File(series, "r") as f:
        detector, specific = f[DETECTOR], f[SPECIFIC]
        assert specific["software_version"][()] == b"1.8.0"
        assert specific["software_version"].dtype.kind == "S"  # fixed-length, not vlen
        assert h5py.check_string_dtype(detector["description"].dtype).length is not None
        assert detector["description"][()] == b"Dectris EIGER2 Si 2M"
        assert detector["sensor_material"][()] == b"Si"
        assert detector["beam_center_x"][()] == pytest.approx(SMALL.beam_x_px)
        assert detector["beam_center_x"].attrs["units"] == b"pixel"
        assert detector["detector_distance"].attrs["units"] == b"m"
        assert detector["x_pixel_size"][()] == pytest.approx(75e-6)
        assert int(detector["bit_depth_image"][()]) == 32
        assert int(detector["saturation_value"][()]) == SATURATION_32BIT
        assert (int(specific["nimages"][()]), int(specific["ntrigger"][()])) == (5, 1)
        assert int(specific["x_pixels_in_detector"][()]) == 1100
        assert int(specific["y_pixels_in_detector"][()]) == 600
        assert specific["photon_energy"][()] == pytest.approx(12398.4193 / SMALL.wavelength_a)
        assert f["/entry/instrument/beam/incident_wavelength"].attrs["units"] == b"angstrom"
        omega = f["/entry/sample/goniometer/omega"]
        # float64 where the DCU writes float32: DIALS 3.12 makes no scan of float32 angles
        assert omega.dtype == np.float64 and omega.attrs["units"] == b"degree"
        assert f["/entry/sample/goniometer/phi"].dtype == np.float32
        assert f["/entry/sample/goniometer/omega_increment"][()] == pytest.approx(0.1)
        np.testing.assert_allclose(omega[()], [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
        np.testing.assert_allclose(f["/entry/sample/goniometer/omega_end"][()], omega[()] + 0.1)
        assert f["/entry/sample/goniometer/phi"].shape == (5,)
        mask = specific["pixel_mask"]
        assert (mask.dtype, mask.compression) == (np.uint32, "gzip")
        assert int(specific["number_of_excluded_pixels"][()]) == np.count_nonzero(mask[()])


def test_master_places_detector_and_sample_as_nxmx_says(series: Path) -> None:
    """The depends_on chains DIALS follows: the beam meets the panel at the beam centre."""
    with h5py.File(series, "r") as f:
        detector = f[DETECTOR]
        translation = f[detector["depends_on"][()].decode()]
        module = detector["module"]
        fast, slow = module["fast_pixel_direction"], module["slow_pixel_direction"]
        offset = f[fast.attrs["depends_on"].decode()]
        assert f[offset.attrs["depends_on"].decode()] == translation
        assert translation.attrs["depends_on"] == b"."
        assert translation[()] == detector["detector_distance"][()]
        np.testing.assert_array_equal(translation.attrs["vector"], [0, 0, 1])
        np.testing.assert_array_equal(fast.attrs["vector"], [-1, 0, 0])
        np.testing.assert_array_equal(slow.attrs["vector"], [0, -1, 0])
        assert fast[()] == detector["x_pixel_size"][()] == slow[()]
        # McStas x and y of the first pixel's corner, in pixels: the beam centre
        corner = offset.attrs["offset"][:2] / float(fast[()])
        np.testing.assert_allclose(corner, [SMALL.beam_x_px, SMALL.beam_y_px], rtol=1e-12)
        assert offset[()] == 0 and offset.attrs["offset_units"] == b"m"
        assert list(module["data_origin"][()]) == [0, 0]
        assert list(module["data_size"][()]) == [600, 1100]  # slow, fast
        assert detector["pixel_mask"] == f[f"{SPECIFIC}/pixel_mask"]  # one dataset
        omega = f[f["/entry/sample/depends_on"][()].decode()]
        assert omega.name == "/entry/sample/goniometer/omega"
        assert omega.attrs["transformation_type"] == b"rotation"
        assert omega.attrs["depends_on"] == b"."
        np.testing.assert_array_equal(omega.attrs["vector"], [-1, 0, 0])


def test_data_are_bitshuffle_lz4_one_frame_per_chunk(series: Path) -> None:
    with h5py.File(series.with_name("scan_7_data_000001.h5"), "r") as f:
        data = f["/entry/data/data"]
        dtype, chunks = data.dtype, data.chunks
        plist = data.id.get_create_plist()
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]

    assert dtype == np.uint32 and chunks == (1, 600, 1100)
    assert len(filters) == 1
    filter_id, _, values, _ = filters[0]
    assert filter_id == 32008 and values[4] == 2  # bitshuffle with LZ4


def test_pixels_carry_dectris_markers(series: Path) -> None:
    with h5py.File(series, "r") as f:
        mask = f[f"{SPECIFIC}/pixel_mask"][()]
    with h5py.File(series.with_name("scan_7_data_000002.h5"), "r") as f:
        pixels = f["/entry/data/data"][1]  # frame 5

    assert np.all(pixels[(mask == MASK_GAP) | (mask == MASK_DEAD)] == 2**32 - 1)
    assert np.all(pixels[mask == MASK_HOT] == SATURATION_32BIT)
    sensitive = pixels[mask == 0]
    assert sensitive.max() <= SATURATION_32BIT
    assert 5 < np.median(sensitive) < 200  # background counts, not an empty frame


def test_mask_layout_and_bad_pixel_counts() -> None:
    mask = eiger_pixel_mask(4148, 4362, seed=3)
    gaps = module_gaps(4148, 4362, 1028, 512, 12, 38)

    np.testing.assert_array_equal(mask == MASK_GAP, gaps)
    assert np.all(gaps[:, 1028:1040]) and np.all(gaps[512:550, :])
    assert not gaps[:512, :1028].any()
    assert (np.count_nonzero(mask == MASK_DEAD), np.count_nonzero(mask == MASK_HOT)) == (300, 200)
    np.testing.assert_array_equal(mask, eiger_pixel_mask(4148, 4362, seed=3))
    assert not np.array_equal(mask, eiger_pixel_mask(4148, 4362, seed=4))


def test_a_tiny_detector_still_gets_one_dead_and_one_hot_pixel() -> None:
    mask = eiger_pixel_mask(40, 30, seed=1)
    assert (np.count_nonzero(mask == MASK_DEAD), np.count_nonzero(mask == MASK_HOT)) == (1, 1)
    assert np.count_nonzero(mask == MASK_GAP) == 0
    assert not eiger_pixel_mask(1, 1, seed=1).any()


def test_16_bit_series_and_single_data_file(tmp_path: Path) -> None:
    master = write_eiger_series(tmp_path, "s16", geometry=SMALL, n_frames=1, bit_depth=16)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["s16_data_000001.h5", "s16_master.h5"]
    with h5py.File(master, "r") as f:
        assert int(f[f"{DETECTOR}/saturation_value"][()]) == SATURATION_16BIT
        assert int(f[f"{DETECTOR}/bit_depth_image"][()]) == 16
        mask = f[f"{SPECIFIC}/pixel_mask"][()]
    with h5py.File(tmp_path / "s16_data_000001.h5", "r") as f:
        pixels = f["/entry/data/data"][0]
    assert pixels.dtype == np.uint16
    assert np.all(pixels[mask == MASK_GAP] == 65535)
    assert pixels[mask == 0].max() <= SATURATION_16BIT


def test_same_seed_same_pixels_and_frames_differ(tmp_path: Path) -> None:
    first = write_eiger_series(tmp_path / "a", "s", geometry=SMALL, n_frames=2, seed=11)
    second = write_eiger_series(tmp_path / "b", "s", geometry=SMALL, n_frames=2, seed=11)
    reader = EigerReader(HandleCache(), LayoutCache())

    a1, a2 = reader.read_frame(first, 1).pixels, reader.read_frame(first, 2).pixels
    np.testing.assert_array_equal(a1, reader.read_frame(second, 1).pixels)
    assert not np.array_equal(a1, a2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_frames": 2, "bit_depth": 8}, "16- or 32-bit images, not 8-bit"),
        ({"n_frames": 0}, "at least one frame, not 0"),
        ({"n_frames": 2, "frames_per_file": -1}, "frames_per_file must be positive"),
    ],
)
def test_impossible_series_are_refused(
    tmp_path: Path, options: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_eiger_series(tmp_path, "bad", geometry=SMALL, **options)


@pytest.mark.slow
def test_full_size_16m_frame_round_trip(tmp_path: Path) -> None:
    geometry = centred_geometry(4148, 4362, 75e-6)
    master = write_eiger_series(tmp_path, "e16m", geometry=geometry, n_frames=1)

    frame = EigerReader(HandleCache(), LayoutCache()).read_frame(master, 1)

    assert frame.pixels.shape == (4362, 4148) and frame.pixels.dtype == np.uint32
    assert frame.meta.native["description"] == "Dectris EIGER2 Si 16M"
    assert frame.mask is not None
    assert np.all(frame.pixels[:, 1028:1040] == 2**32 - 1)  # the first column gap
    with h5py.File(tmp_path / "e16m_data_000001.h5", "r") as f:
        np.testing.assert_array_equal(frame.pixels, f["/entry/data/data"][0])
