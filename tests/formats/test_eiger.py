"""EigerReader against generated series, hand-made NeXus files and the real 9M master."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest

from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    FrameRangeError,
)
from imageserver.formats.base import EncodedFrame
from imageserver.formats.eiger import EigerReader
from imageserver.formats.handles import HandleCache, LayoutCache
from imageserver.sampledata.eiger import MASK_DEAD, MASK_GAP, MASK_HOT, SATURATION_32BIT
from imageserver.sampledata.pattern import Geometry

HDF5_HEAD = b"\x89HDF\r\n\x1a\n\x00\x00\x00\x00"
BSLZ4 = hdf5plugin.Bitshuffle(nelems=0, cname="lz4")


def stored_frames(master: Path) -> dict[int, np.ndarray]:
    """Every frame of a generated series, read the plain way: h5py with the HDF5 filter."""
    frames: dict[int, np.ndarray] = {}
    with h5py.File(master, "r") as f:
        for name in sorted(f["/entry/data"]):
            dataset = f["/entry/data"][name]
            low = int(dataset.attrs["image_nr_low"])
            for index in range(dataset.shape[0]):
                frames[low + index] = dataset[index]
    return frames


def write_nexus_data(
    path: Path,
    data: np.ndarray,
    *,
    low: int | None = None,
    high: int | None = None,
    **dataset_options: Any,
) -> Path:
    """A minimal NeXus data file: /entry/data/data with optional image_nr_low/high."""
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("/entry/data/data", data=data, **dataset_options)
        if low is not None:
            dataset.attrs["image_nr_low"] = np.int32(low)
        if high is not None:
            dataset.attrs["image_nr_high"] = np.int32(high)
    return path


def write_master(path: Path, links: dict[str, str], **datasets: Any) -> Path:
    """A minimal master: external links under /entry/data plus datasets at given paths."""
    with h5py.File(path, "w") as f:
        group = f.create_group("/entry/data")
        for name, filename in links.items():
            group[name] = h5py.ExternalLink(filename, "/entry/data/data")
        for dataset_path, value in datasets.items():
            f.create_dataset(dataset_path.replace("__", "/"), data=value)
    return path


def corrupt_bytes(path: Path, offset: int, replacement: bytes) -> None:
    """Overwrite bytes in place, keeping the file's length (what a bad disk block does)."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(replacement)


def first_chunk(path: Path) -> tuple[int, int]:
    """Byte offset and size of frame 0's chunk in a data file."""
    with h5py.File(path, "r") as f:
        info = f["/entry/data/data"].id.get_chunk_info(0)
    return info.byte_offset, info.size


# --- sniffing ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".h5", ".nxs", ".hdf5", ".bin", ""])
def test_sniff_claims_the_hdf5_signature_whatever_the_suffix(suffix: str) -> None:
    assert EigerReader.sniff(HDF5_HEAD, suffix) is True


@pytest.mark.parametrize(
    "head",
    [b"", b"\x89HDF\r\n", b"###CBF: VERSION 1.5", b"II*\x00" + bytes(8), b"x\x89HDF\r\n\x1a\n"],
)
def test_sniff_refuses_anything_else(head: bytes) -> None:
    assert EigerReader.sniff(head, ".h5") is False


# --- generated series -------------------------------------------------------------------


def test_meta_of_a_generated_master(
    eiger_series: Path, eiger_reader: EigerReader, eiger_geometry: Geometry
) -> None:
    meta = eiger_reader.read_meta(eiger_series)

    assert (meta.format_name, meta.width_px, meta.height_px) == ("eiger", 1100, 600)
    assert (meta.bit_depth, meta.first_frame, meta.last_frame) == (32, 1, 5)
    assert meta.beam_center_x_px == pytest.approx(eiger_geometry.beam_x_px)
    assert meta.beam_center_y_px == pytest.approx(eiger_geometry.beam_y_px)
    assert meta.distance_m == pytest.approx(0.25, rel=1e-6)
    assert meta.wavelength_a == pytest.approx(eiger_geometry.wavelength_a, rel=1e-6)
    assert meta.pixel_size_x_m == pytest.approx(75e-6, rel=1e-6)
    assert meta.pixel_size_y_m == pytest.approx(75e-6, rel=1e-6)
    assert meta.saturation_value == SATURATION_32BIT


def test_native_fields_use_the_1_8_table_with_typed_values(
    eiger_series: Path, eiger_reader: EigerReader
) -> None:
    native = eiger_reader.read_meta(eiger_series).native

    assert native["software_version"] == "1.8.0"
    assert native["definition"] == "NXmx"
    assert native["description"] == "Dectris EIGER2 Si 2M"
    assert native["nimages"] == 5 and type(native["nimages"]) is int
    assert native["x_pixels_in_detector"] == 1100
    assert native["image_depth"] == 4
    assert (native["first_frame"], native["last_frame"]) == (1, 5)
    # float32 arrays come out element by element (the legacy stride bug is gone)
    assert native["omega"] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=1e-6)
    assert all(type(value) is float for value in native["omega"])
    assert native["omega_range_total"] == pytest.approx(0.5, rel=1e-6)
    assert "omega_start" not in native  # a 1.6-only name
    assert "pixel_mask" not in native


def test_every_frame_equals_the_plain_h5py_read(
    eiger_series: Path, eiger_reader: EigerReader
) -> None:
    expected = stored_frames(eiger_series)
    assert sorted(expected) == [1, 2, 3, 4, 5]

    for number, pixels in expected.items():
        frame = eiger_reader.read_frame(eiger_series, number)
        assert frame.number == number and frame.path == eiger_series
        assert frame.pixels.dtype == np.uint32 and frame.pixels.flags.c_contiguous
        np.testing.assert_array_equal(frame.pixels, pixels)


def test_a_bslz4_frame_is_kept_compressed_and_decodes_by_rows(
    eiger_series: Path, eiger_reader: EigerReader
) -> None:
    """One frame per bitshuffle-LZ4 chunk: the reader hands out the checked stream, whose
    rows are the stored rows, and which is far smaller than the frame."""
    expected = stored_frames(eiger_series)
    for number, pixels in expected.items():
        source = eiger_reader.read_source(eiger_series, number)
        assert isinstance(source, EncodedFrame)
        assert (source.number, source.path, source.shape) == (number, eiger_series, pixels.shape)
        assert source.nbytes < pixels.nbytes / 2
        np.testing.assert_array_equal(source.rows(7, 19), pixels[7:19])
        np.testing.assert_array_equal(source.decode().pixels, pixels)
        assert "series_data_" in source.origin


def test_mask_is_shared_read_only_and_marks_every_flagged_pixel(
    eiger_series: Path, eiger_reader: EigerReader
) -> None:
    first = eiger_reader.read_frame(eiger_series, 1)
    last = eiger_reader.read_frame(eiger_series, 5)
    with h5py.File(eiger_series, "r") as f:
        dectris = f["/entry/instrument/detector/detectorSpecific/pixel_mask"][()]

    assert first.mask is not None and first.mask is last.mask
    assert first.mask.dtype == np.uint8 and not first.mask.flags.writeable
    np.testing.assert_array_equal(first.mask, (dectris != 0).astype(np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        first.mask[0, 0] = 1
    # as the detector writes them: gaps and dead pixels carry the marker, hot pixels count high
    marked = (dectris == MASK_GAP) | (dectris == MASK_DEAD)
    assert np.all(first.pixels[marked] == 2**32 - 1)
    assert np.all(first.pixels[dectris == MASK_HOT] == SATURATION_32BIT)
    assert first.pixels[dectris == 0].max() <= SATURATION_32BIT


def test_16_bit_series(eiger_series16: Path, eiger_reader: EigerReader) -> None:
    meta = eiger_reader.read_meta(eiger_series16)
    frame = eiger_reader.read_frame(eiger_series16, 2)

    assert (meta.bit_depth, meta.native["image_depth"], meta.saturation_value) == (16, 2, 65534)
    assert frame.pixels.dtype == np.uint16
    np.testing.assert_array_equal(frame.pixels, stored_frames(eiger_series16)[2])
    assert frame.mask is not None
    assert frame.pixels[frame.mask == 0].max() <= 65534


@pytest.mark.parametrize("number", [0, -1, 6, 1000])
def test_frame_outside_the_series_names_the_valid_range(
    eiger_series: Path, eiger_reader: EigerReader, number: int
) -> None:
    with pytest.raises(FrameRangeError, match=rf"frame {number} is outside .* 1–5") as info:
        eiger_reader.read_frame(eiger_series, number)
    assert str(eiger_series) in str(info.value)


def test_a_frame_in_a_gap_between_data_files_is_not_stored(
    tmp_path: Path, eiger_reader: EigerReader
) -> None:
    stack = np.zeros((2, 8, 16), dtype=np.uint16)
    write_nexus_data(tmp_path / "g_data_000001.h5", stack, low=1, high=2)
    write_nexus_data(tmp_path / "g_data_000002.h5", stack, low=5, high=6)
    master = write_master(
        tmp_path / "g_master.h5",
        {"data_000001": "g_data_000001.h5", "data_000002": "g_data_000002.h5"},
    )

    with pytest.raises(
        FrameRangeError, match=r"frame 3 is not stored in the file \(stored: 1–2, 5–6\)$"
    ):
        eiger_reader.read_frame(master, 3)
    with pytest.raises(
        FrameRangeError, match=r"g_master\.h5: frame 7 is outside the file's frames 1–6$"
    ):
        eiger_reader.read_frame(master, 7)


def test_a_data_file_opened_alone_uses_its_own_frame_numbers(
    eiger_series: Path, eiger_reader: EigerReader
) -> None:
    data_file = eiger_series.with_name("series_data_000002.h5")

    meta = eiger_reader.read_meta(data_file)
    frame = eiger_reader.read_frame(data_file, 4)

    assert (meta.first_frame, meta.last_frame, meta.width_px, meta.bit_depth) == (3, 4, 1100, 32)
    assert meta.beam_center_x_px is None and frame.mask is None
    np.testing.assert_array_equal(frame.pixels, stored_frames(eiger_series)[4])
    with pytest.raises(FrameRangeError, match="3–4"):
        eiger_reader.read_frame(data_file, 1)


def test_without_image_nr_attributes_frames_count_on_across_files(
    tmp_path: Path, eiger_reader: EigerReader
) -> None:
    stacks = [np.full((n, 8, 16), value, dtype=np.uint16) for n, value in ((3, 10), (2, 20))]
    write_nexus_data(tmp_path / "a_data_000001.h5", stacks[0])
    write_nexus_data(tmp_path / "a_data_000002.h5", stacks[1])
    master = write_master(
        tmp_path / "a_master.h5",
        {"data_000001": "a_data_000001.h5", "data_000002": "a_data_000002.h5"},
    )

    meta = eiger_reader.read_meta(master)

    assert (meta.first_frame, meta.last_frame) == (1, 5)
    assert [int(eiger_reader.read_frame(master, n).pixels[0, 0]) for n in range(1, 6)] == [
        10,
        10,
        10,
        20,
        20,
    ]
    alone = eiger_reader.read_meta(tmp_path / "a_data_000002.h5")
    assert (alone.first_frame, alone.last_frame) == (1, 2)


def test_bit_depth_comes_from_the_data_not_the_header(
    eiger_copy: Path, eiger_reader: EigerReader
) -> None:
    """Legacy bug B16: the header's bit_depth_image decided how the buffer was read."""
    with h5py.File(eiger_copy, "r+") as f:
        f["/entry/instrument/detector/bit_depth_image"][()] = 16

    meta = eiger_reader.read_meta(eiger_copy)

    assert meta.native["bit_depth_image"] == 16
    assert (meta.bit_depth, meta.native["image_depth"]) == (32, 4)
    assert eiger_reader.read_frame(eiger_copy, 1).pixels.dtype == np.uint32


# --- storage variants: the raw-chunk path against h5py's own filter path -----------------


def pattern(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    values = np.arange(int(np.prod(shape)), dtype=np.int64) % 5003 * 7
    return values.reshape(shape).astype(dtype)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"chunks": (1, 37, 83), **BSLZ4}, id="bslz4-whole-frame"),
        pytest.param({"chunks": (2, 16, 32), **BSLZ4}, id="bslz4-tiles"),
        pytest.param({"chunks": (3, 37, 83), **BSLZ4}, id="bslz4-three-frames-per-chunk"),
        pytest.param({"chunks": (1, 37, 83), "compression": "gzip"}, id="gzip"),
        pytest.param({}, id="contiguous"),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_every_storage_layout_gives_the_stored_pixels(
    tmp_path: Path, eiger_reader: EigerReader, options: dict[str, Any], dtype: type[np.generic]
) -> None:
    data = pattern((4, 37, 83), dtype)
    path = write_nexus_data(tmp_path / "d.h5", data, low=1, high=4, **options)

    for number in range(1, 5):
        pixels = eiger_reader.read_frame(path, number).pixels
        assert pixels.dtype == dtype
        np.testing.assert_array_equal(pixels, data[number - 1])


def test_a_chunk_stored_without_its_filter_is_read_as_is(
    tmp_path: Path, eiger_reader: EigerReader
) -> None:
    data = pattern((2, 24, 40), np.uint32)
    path = write_nexus_data(tmp_path / "d.h5", data, chunks=(1, 24, 40), **BSLZ4)
    with h5py.File(path, "r+") as f:
        f["/entry/data/data"].id.write_direct_chunk((1, 0, 0), data[0].tobytes(), filter_mask=1)

    np.testing.assert_array_equal(eiger_reader.read_frame(path, 2).pixels, data[0])
    np.testing.assert_array_equal(eiger_reader.read_frame(path, 1).pixels, data[0])


@pytest.mark.parametrize(
    ("stored", "expected_type"), [("<i4", np.uint32), ("<i2", np.uint16), (">u4", np.uint32)]
)
@pytest.mark.parametrize("options", [{"chunks": (1, 6, 8), **BSLZ4}, {}], ids=["bslz4", "plain"])
def test_signed_and_big_endian_pixels_become_native_unsigned(
    tmp_path: Path,
    eiger_reader: EigerReader,
    stored: str,
    expected_type: type[np.generic],
    options: dict[str, Any],
) -> None:
    values = np.arange(-3, 45).reshape(1, 6, 8)
    if stored.startswith(">"):
        values = np.abs(values)
    path = write_nexus_data(tmp_path / "d.h5", values.astype(stored), **options)

    frame = eiger_reader.read_frame(path, 1)

    assert frame.pixels.dtype == np.dtype(expected_type)
    assert frame.meta.bit_depth == np.dtype(expected_type).itemsize * 8
    expected = np.where(values[0] < 0, np.iinfo(np.dtype(expected_type)).max, values[0])
    np.testing.assert_array_equal(frame.pixels, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int64])
def test_unsupported_pixel_types_are_refused_clearly(
    tmp_path: Path, eiger_reader: EigerReader, dtype: type[np.generic]
) -> None:
    path = write_nexus_data(tmp_path / "odd.h5", np.zeros((1, 4, 4), dtype=dtype))

    with pytest.raises(CorruptFrameError, match=r"odd\.h5: pixels stored as .* not supported"):
        eiger_reader.read_meta(path)


# --- header details ---------------------------------------------------------------------


def test_units_and_fallbacks_of_the_header(tmp_path: Path, eiger_reader: EigerReader) -> None:
    write_nexus_data(tmp_path / "h_data_000001.h5", np.zeros((1, 4, 4), np.uint16), low=1, high=1)
    master = tmp_path / "h_master.h5"
    write_master(master, {"data_000001": "h_data_000001.h5"})
    with h5py.File(master, "r+") as f:
        detector = f.create_group("/entry/instrument/detector")
        detector["detector_distance"] = np.float32(180.0)
        detector["detector_distance"].attrs["units"] = np.bytes_(b"mm")
        detector["module/data_origin"] = np.array([2080, 1910], dtype=np.int32)
        detector["detectorSpecific/photon_energy"] = np.float32(12398.4193)
        detector["detectorSpecific/software_version"] = np.bytes_(b"1.8.0")

    meta = eiger_reader.read_meta(master)

    assert meta.distance_m == pytest.approx(0.18, rel=1e-6)
    assert meta.native["detector_distance"] == pytest.approx(180.0)  # as stored
    assert meta.wavelength_a == pytest.approx(1.0, rel=1e-6)  # from the photon energy
    assert meta.native["data_origin"] == [2080, 1910]
    assert meta.beam_center_x_px is None and meta.saturation_value is None


def test_dcu_1_6_0_files_get_the_1_6_table(tmp_path: Path, eiger_reader: EigerReader) -> None:
    write_nexus_data(tmp_path / "o_data_000001.h5", np.zeros((1, 4, 4), np.uint16), low=1, high=1)
    master = tmp_path / "o_master.h5"
    write_master(master, {"data_000001": "o_data_000001.h5"})
    with h5py.File(master, "r+") as f:
        f["/entry/instrument/detector/detectorSpecific/software_version"] = np.bytes_(b"1.6.0")
        f["/entry/sample/goniometer/omega_start"] = np.float32(12.5)
        f["/entry/sample/goniometer/omega"] = np.array([12.5], dtype=np.float32)

    native = eiger_reader.read_meta(master).native

    assert native["omega_start"] == 12.5
    assert "omega" not in native


def test_header_size_disagreeing_with_the_data_is_logged(
    eiger_copy: Path, eiger_reader: EigerReader, caplog: pytest.LogCaptureFixture
) -> None:
    with h5py.File(eiger_copy, "r+") as f:
        f["/entry/instrument/detector/detectorSpecific/x_pixels_in_detector"][()] = 999

    meta = eiger_reader.read_meta(eiger_copy)

    assert meta.width_px == 1100
    assert "header says 999 x 600 pixels but the data is 1100 x 600" in caplog.text


def test_mask_of_the_wrong_size_is_refused(eiger_copy: Path, eiger_reader: EigerReader) -> None:
    with h5py.File(eiger_copy, "r+") as f:
        del f["/entry/instrument/detector/detectorSpecific/pixel_mask"]
        f["/entry/instrument/detector/detectorSpecific/pixel_mask"] = np.zeros((10, 10), np.uint32)

    with pytest.raises(CorruptFrameError, match=r"pixel_mask is \(10, 10\) but the images"):
        eiger_reader.read_meta(eiger_copy)


def test_missing_mask_is_not_an_error(eiger_copy: Path, eiger_reader: EigerReader) -> None:
    with h5py.File(eiger_copy, "r+") as f:
        del f["/entry/instrument/detector/detectorSpecific/pixel_mask"]

    assert eiger_reader.read_frame(eiger_copy, 1).mask is None


def test_a_file_without_image_data_is_refused(tmp_path: Path, eiger_reader: EigerReader) -> None:
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f["/entry/definition"] = np.bytes_(b"NXmx")

    with pytest.raises(CorruptFrameError, match=r"empty\.h5: no image data under /entry/data"):
        eiger_reader.read_meta(path)


# --- missing, unreadable and corrupt files -------------------------------------------------


def test_a_nonexistent_file(tmp_path: Path, eiger_reader: EigerReader) -> None:
    path = tmp_path / "nothing_master.h5"
    with pytest.raises(FileMissingError, match=r"nothing_master\.h5: file does not exist"):
        eiger_reader.read_meta(path)
    with pytest.raises(FileMissingError, match=r"nothing_master\.h5"):
        eiger_reader.read_frame(path, 1)


def test_a_missing_data_file_spoils_only_its_own_frames(
    eiger_copy: Path, eiger_reader: EigerReader
) -> None:
    data_file = eiger_copy.with_name("series_data_000002.h5")
    kept = data_file.rename(data_file.with_suffix(".kept"))

    assert eiger_reader.read_meta(eiger_copy).last_frame == 5
    np.testing.assert_array_equal(
        eiger_reader.read_frame(eiger_copy, 5).pixels, stored_frames_of(eiger_copy, kept, 5)
    )
    with pytest.raises(FileMissingError, match=r"frame 3 .*series_data_000002\.h5.*not exist"):
        eiger_reader.read_frame(eiger_copy, 3)

    kept.rename(data_file)  # the detector finished writing it
    assert eiger_reader.read_frame(eiger_copy, 3).number == 3


def test_a_data_file_deleted_after_the_walk(eiger_copy: Path, eiger_reader: EigerReader) -> None:
    assert eiger_reader.read_frame(eiger_copy, 3).number == 3  # layout and handle cached
    eiger_copy.with_name("series_data_000002.h5").unlink()

    with pytest.raises(
        FileMissingError,
        match=r"frame 4 cannot be read: .*series_data_000002\.h5: linked data file does not",
    ):
        eiger_reader.read_frame(eiger_copy, 4)
    assert eiger_reader.read_frame(eiger_copy, 1).number == 1


def stored_frames_of(master: Path, moved_data_file: Path, number: int) -> np.ndarray:
    """Frame ``number`` read straight from the data file that holds it (not the moved one)."""
    for path in master.parent.glob("series_data_*.h5"):
        if path == moved_data_file:
            continue
        with h5py.File(path, "r") as f:
            dataset = f["/entry/data/data"]
            low, high = int(dataset.attrs["image_nr_low"]), int(dataset.attrs["image_nr_high"])
            if low <= number <= high:
                return dataset[number - low]
    raise AssertionError(f"no data file holds frame {number}")


def test_first_4_kib_of_a_real_master(
    shared_data: Path, tmp_path: Path, eiger_reader: EigerReader
) -> None:
    path = tmp_path / "cut_master.h5"
    path.write_bytes((shared_data / "eiger9m_master.h5").read_bytes()[:4096])

    with pytest.raises(CorruptFrameError, match=r"cut_master\.h5: .*truncated file"):
        eiger_reader.read_meta(path)


def test_garbage_after_the_signature(tmp_path: Path, eiger_reader: EigerReader) -> None:
    path = tmp_path / "garbage.h5"
    path.write_bytes(HDF5_HEAD[:8] + np.random.default_rng(1).bytes(6000))

    with pytest.raises(CorruptFrameError, match=r"garbage\.h5: .*not a valid HDF5 file"):
        eiger_reader.read_frame(path, 1)


def test_a_data_file_truncated_inside_a_chunk(eiger_copy: Path, eiger_reader: EigerReader) -> None:
    data_file = eiger_copy.with_name("series_data_000002.h5")
    offset, size = first_chunk(data_file)
    with data_file.open("r+b") as fh:
        fh.truncate(offset + size // 2)

    with pytest.raises(CorruptFrameError, match=r"series_data_000002\.h5.*truncated"):
        eiger_reader.read_frame(eiger_copy, 3)
    assert eiger_reader.read_frame(eiger_copy, 1).number == 1  # other files still serve


@pytest.mark.parametrize(
    ("offset_in_chunk", "replacement", "message"),
    [
        (0, b"\x00\x00\x00\x00\x00\x00\x00\x10", "invalid bitshuffle header"),
        (8, b"\x00\x00\x00\x03", "invalid bitshuffle header"),
        (12, b"\xff\xff\xff\x00", "block past the end"),
        (12, b"\x00\x00\x00\x01", "corrupt"),
    ],
    ids=["uncompressed-size", "block-size", "huge-block", "tiny-block"],
)
def test_a_corrupt_chunk_is_refused_without_crashing(
    eiger_copy: Path,
    eiger_reader: EigerReader,
    offset_in_chunk: int,
    replacement: bytes,
    message: str,
) -> None:
    """bitshuffle itself would read past its buffer here and take the process down."""
    data_file = eiger_copy.with_name("series_data_000001.h5")
    offset, _ = first_chunk(data_file)
    corrupt_bytes(data_file, offset + offset_in_chunk, replacement)

    with pytest.raises(CorruptFrameError, match=rf"series_data_000001\.h5: chunk .*{message}"):
        eiger_reader.read_frame(eiger_copy, 1)


def test_random_damage_inside_a_chunk_never_crashes(
    eiger_copy: Path, eiger_reader: EigerReader
) -> None:
    data_file = eiger_copy.with_name("series_data_000003.h5")
    offset, size = first_chunk(data_file)
    rng = np.random.default_rng(7)
    outcomes: set[object] = set()
    for trial in range(12):
        position = offset + int(rng.integers(12, size - 64))
        corrupt_bytes(data_file, position, rng.bytes(int(rng.integers(1, 64))))
        os.utime(data_file, ns=(trial, trial))  # a new identity, so no stale handle is reused
        try:
            outcomes.add(eiger_reader.read_frame(eiger_copy, 5).pixels.shape)
        except CorruptFrameError as exc:
            outcomes.add("corrupt" if "series_data_000003.h5" in str(exc) else str(exc))
    assert outcomes <= {(600, 1100), "corrupt"}


@contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block as 'nobody' when the tests run as root (chmod means nothing to root)."""
    if os.geteuid() != 0:
        yield
        return
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to drop to")
    os.seteuid(nobody)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def world_readable_copy(eiger_series: Path) -> Iterator[Path]:
    """A copy of the series in a directory anyone may enter (pytest's tmp is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="eiger-access-"))
    directory.chmod(0o755)
    for source in eiger_series.parent.iterdir():
        shutil.copy2(source, directory / source.name)
        (directory / source.name).chmod(0o644)
    yield directory / eiger_series.name
    shutil.rmtree(directory)


@pytest.mark.parametrize("locked", ["series_master.h5", "series_data_000001.h5"])
def test_an_unreadable_file_is_an_access_error(world_readable_copy: Path, locked: str) -> None:
    reader = EigerReader(HandleCache(), LayoutCache())
    (world_readable_copy.parent / locked).chmod(0o000)

    with unprivileged(), pytest.raises(FileAccessError, match=rf"{locked}.*ermission denied"):
        reader.read_frame(world_readable_copy, 1)


# --- caching, rewriting and threads ------------------------------------------------------


class CountingOpener:
    """A real opener that records which files were opened (to observe the caches)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, path: str) -> h5py.File:
        self.opened.append(os.path.basename(path))
        return h5py.File(path, "r")


def test_frames_reuse_the_parsed_layout_and_open_handles(eiger_series: Path) -> None:
    """Legacy bug P1: each frame reopened the master and every data file and reread the mask."""
    opener = CountingOpener()
    reader = EigerReader(HandleCache(opener=opener), LayoutCache())

    for _ in range(3):
        for number in range(1, 6):
            reader.read_frame(eiger_series, number)

    assert sorted(opener.opened) == [
        "series_data_000001.h5",
        "series_data_000002.h5",
        "series_data_000003.h5",
        "series_master.h5",
    ]


def test_a_rewritten_series_is_read_afresh(eiger_copy: Path, eiger_reader: EigerReader) -> None:
    before = eiger_reader.read_frame(eiger_copy, 1).pixels
    data_file = eiger_copy.with_name("series_data_000001.h5")
    replacement = data_file.with_suffix(".new")
    shutil.copy2(data_file, replacement)
    with h5py.File(replacement, "r+") as f:
        f["/entry/data/data"][0] = f["/entry/data/data"][1]
    mtime_ns = data_file.stat().st_mtime_ns + 10**9
    os.utime(replacement, ns=(mtime_ns, mtime_ns))
    replacement.replace(data_file)  # a new series written under the same name

    after = eiger_reader.read_frame(eiger_copy, 1).pixels

    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, stored_frames(eiger_copy)[2])


def test_a_data_file_rewritten_in_place_is_read_afresh(
    eiger_copy: Path, eiger_reader: EigerReader
) -> None:
    """Same inode, new bytes: HDF5 would share the still-open old handle's chunk index."""
    eiger_reader.read_frame(eiger_copy, 1)  # the data file's handle is now open and cached
    data_file = eiger_copy.with_name("series_data_000001.h5")
    inode = data_file.stat().st_ino
    replacement = data_file.with_suffix(".new")
    shutil.copy2(data_file, replacement)
    with h5py.File(replacement, "r+") as f:
        f["/entry/data/data"][0] = f["/entry/data/data"][1]
    shutil.copyfile(replacement, data_file)  # truncate and write: the inode stays
    mtime_ns = data_file.stat().st_mtime_ns + 10**9
    os.utime(data_file, ns=(mtime_ns, mtime_ns))
    assert data_file.stat().st_ino == inode

    after = eiger_reader.read_frame(eiger_copy, 1).pixels

    np.testing.assert_array_equal(after, stored_frames(eiger_copy)[2])


def test_many_threads_read_while_handles_are_evicted(eiger_series: Path) -> None:
    expected = stored_frames(eiger_series)
    handles = HandleCache(max_files=2)  # four files in play: handles are evicted while in use
    reader = EigerReader(handles, LayoutCache())
    numbers = [1 + i % 5 for i in range(120)]

    def read(number: int) -> bool:
        return bool(
            np.array_equal(reader.read_frame(eiger_series, number).pixels, expected[number])
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(read, numbers, timeout=120))

    assert results == [True] * len(numbers)
    assert len(handles) <= 2


# --- the real Eiger 9M master --------------------------------------------------------------


def test_real_9m_master_metadata(shared_data: Path, eiger_reader: EigerReader) -> None:
    """A DCU 1.6.4 file: not exactly "1.6.0", so the fork's rule gives it the 1.8 table.

    It has no saturation_value (a 1.8 name); its countrate_correction_count_cutoff says the
    same, so overloads are flagged from 12440 counts up.
    """
    meta = eiger_reader.read_meta(shared_data / "eiger9m_master.h5")

    assert (meta.width_px, meta.height_px) == (3110, 3269)
    assert meta.bit_depth == 16  # its data file is absent: bit_depth_image is all there is
    assert (meta.first_frame, meta.last_frame) == (1, 1)
    assert meta.beam_center_x_px == pytest.approx(1607.415, rel=1e-7)
    assert meta.beam_center_y_px == pytest.approx(1586.4314, rel=1e-7)
    assert meta.wavelength_a == pytest.approx(0.9801122, rel=1e-7)
    assert meta.distance_m == pytest.approx(0.134255, rel=1e-7)
    assert meta.pixel_size_x_m == pytest.approx(7.5e-5, rel=1e-7)
    assert meta.saturation_value == 12440  # countrate_correction_count_cutoff: DCU < 1.8
    native = meta.native
    assert native["software_version"] == "1.6.4"
    assert native["description"] == "Dectris Eiger 9M"
    assert native["detector_number"] == "E-18-0102"
    assert native["element"] == ""
    assert (native["x_pixels_in_detector"], native["y_pixels_in_detector"]) == (3110, 3269)
    assert native["number_of_excluded_pixels"] == 637991
    assert native["photon_energy"] == 12650.0
    assert native["bit_depth_readout"] == 12
    assert native["detector_translation"] == pytest.approx([0.12055613, 0.11898236, -0.134255])
    assert native["detector_orientation"] == [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    assert native["omega_range_total"] == 400.0
    assert native["omega_end"] == 0.5  # stored with shape (1,): a scalar, as legacy did
    assert "omega_start" not in native and "calibration_type" not in native


def test_real_9m_master_names_its_missing_data_file(
    shared_data: Path, eiger_reader: EigerReader
) -> None:
    with pytest.raises(
        FileMissingError,
        match=r"eiger9m_master\.h5: frame 1 cannot be read: .*"
        r"dectris_eiger_data_000001\.h5: linked data file does not exist",
    ):
        eiger_reader.read_frame(shared_data / "eiger9m_master.h5", 1)


def test_real_9m_master_with_a_generated_data_file(
    shared_data: Path, tmp_path: Path, eiger_reader: EigerReader
) -> None:
    master = tmp_path / "eiger9m_master.h5"
    shutil.copy2(shared_data / "eiger9m_master.h5", master)
    data = pattern((1, 3269, 3110), np.uint32)
    write_nexus_data(
        tmp_path / "dectris_eiger_data_000001.h5", data, low=1, high=1, chunks=data.shape, **BSLZ4
    )

    frame = eiger_reader.read_frame(master, 1)

    assert frame.meta.bit_depth == 32  # the data says so, whatever bit_depth_image claims
    np.testing.assert_array_equal(frame.pixels, data[0])
    assert frame.mask is not None and frame.mask.shape == (3269, 3110)
    assert int(frame.mask.sum()) == 0  # the DIALS authors zeroed this file's mask
