"""Generic TIFF reader: monitor images, files written by Pillow, unsupported and broken TIFFs."""

from __future__ import annotations

import struct
from pathlib import Path

import fabio
import numpy as np
import pytest
from PIL import Image

from imageserver.errors import CorruptFrameError, MissingMetadataError
from imageserver.formats import open_frame, read_meta
from imageserver.formats.tiff import parse_tiff_layout
from imageserver.sampledata.marccd import write_marccd, write_monitor_tiff


@pytest.mark.parametrize("bit_depth", [16, 32])
def test_monitor_tiff(tmp_path: Path, bit_depth: int) -> None:
    path = write_monitor_tiff(tmp_path / f"monitor_{bit_depth}.tif", 1100, 600, bit_depth)
    frame = open_frame(path, 1)
    meta = frame.meta
    assert (meta.format_name, meta.width_px, meta.height_px, meta.bit_depth) == (
        "tiff",
        1100,
        600,
        bit_depth,
    )
    assert (meta.beam_center_x_px, meta.beam_center_y_px) == (549.5, 299.5)
    assert meta.native == {"beam_center_is_default": True}
    assert (meta.distance_m, meta.wavelength_a, meta.pixel_size_x_m) == (None, None, None)
    dtype = np.uint16 if bit_depth == 16 else np.uint32
    assert frame.pixels.dtype == dtype and frame.pixels.shape == (600, 1100)
    np.testing.assert_array_equal(frame.pixels, fabio.open(str(path)).data)
    top = np.iinfo(dtype).max
    assert frame.pixels[100, 1030] == top  # Eiger module gap column
    assert frame.pixels[514, 100] == top  # Eiger module gap row
    assert read_meta(path) == meta


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_tiff_written_by_pillow_in_both_byte_orders(tmp_path: Path, mode: str) -> None:
    counts = (np.arange(90 * 70, dtype=np.uint32).reshape(70, 90) * 7 % 65000).astype(np.uint16)
    path = tmp_path / "pillow.tiff"
    stored = counts.astype("<u2" if mode == "I;16" else ">u2")
    Image.frombytes(mode, (90, 70), stored.tobytes()).save(path)
    frame = open_frame(path, 1)
    np.testing.assert_array_equal(frame.pixels, counts)
    assert frame.pixels.dtype.isnative
    assert frame.pixels[69, 89] == counts[69, 89] == (69 * 90 + 89) * 7 % 65000


def test_compressed_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lzw.tif"
    Image.fromarray(np.zeros((40, 50), dtype=np.uint16)).save(path, compression="tiff_lzw")
    with pytest.raises(CorruptFrameError, match=r"lzw\.tif: TIFF compression 5 is not supported"):
        open_frame(path, 1)


def test_eight_bit_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gray8.tif"
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(path)
    with pytest.raises(CorruptFrameError, match=r"gray8\.tif: 8-bit TIFF pixels are not supported"):
        read_meta(path)


def test_tiff_without_bits_per_sample(tmp_path: Path) -> None:
    path = write_monitor_tiff(tmp_path / "nobits.tif", 64, 32, 16)
    content = bytearray(path.read_bytes())
    (count,) = struct.unpack_from("<H", content, 8)
    for entry in range(10, 10 + 12 * count, 12):
        if struct.unpack_from("<H", content, entry)[0] == 258:
            content[entry : entry + 2] = struct.pack("<H", 65000)
    path.write_bytes(bytes(content))
    with pytest.raises(MissingMetadataError, match=r"nobits\.tif: TIFF has no BitsPerSample"):
        read_meta(path)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    source = write_monitor_tiff(tmp_path / "whole.tif", 64, 32, 32)
    path = tmp_path / "cut.tif"
    path.write_bytes(source.read_bytes()[:-10])
    assert read_meta(path).width_px == 64
    with pytest.raises(CorruptFrameError, match=r"cut\.tif: truncated TIFF: 8182 of 8192 bytes"):
        open_frame(path, 1)


def test_directory_outside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dangling.tif"
    path.write_bytes(b"II*\x00" + struct.pack("<I", 10_000) + bytes(100))
    with pytest.raises(CorruptFrameError, match=r"dangling\.tif: TIFF directory lies outside"):
        read_meta(path)


def test_layout_of_a_multi_strip_big_endian_file(tmp_path: Path) -> None:
    path = write_marccd(tmp_path / "be.mccd", size_px=64, byte_order=">")
    layout = parse_tiff_layout(path.read_bytes(), path)
    assert layout.byte_order == ">" and (layout.width_px, layout.height_px) == (64, 64)
    assert layout.strip_offsets == (4096, 6144, 8192, 10240)
    assert layout.strip_byte_counts == (2048,) * 4


def test_a_tag_claiming_millions_of_values_is_refused_unread(tmp_path: Path) -> None:
    """A crafted count must not turn into a tuple of millions of Python ints."""
    content = bytearray(write_monitor_tiff(tmp_path / "source.tif", 64, 32, 16).read_bytes())
    (count,) = struct.unpack_from("<H", content, 8)
    for entry in range(10, 10 + 12 * count, 12):
        if struct.unpack_from("<H", content, entry)[0] == 273:  # StripOffsets
            struct.pack_into("<HHI", content, entry, 273, 4, 2_000_000)
    path = tmp_path / "many.tif"
    path.write_bytes(bytes(content))
    with pytest.raises(CorruptFrameError, match=r"many\.tif: TIFF tag 273 claims 2000000 values"):
        read_meta(path)
