"""MAR CCD reader: both byte orders, legacy metadata, pixels against Pillow, broken headers."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageserver.errors import CorruptFrameError, FrameRangeError, MissingMetadataError
from imageserver.formats import detect_reader, open_frame, read_meta
from imageserver.formats.base import HC_EV_ANGSTROM
from imageserver.sampledata.marccd import write_marccd

SIZE_PX = 192
LEGACY_KEYS = {
    "filename", "filepath", "comment", "detector", "beamline", "detector_distance",
    "rotationRange", "startPhi", "wavelength", "photon_energy", "beam_center_x",
    "beam_center_y", "x_pixel_size", "y_pixel_size", "integrationTime", "exposureTime",
    "readoutTime", "meanValue", "rmsValue", "nSaturated", "saturation", "minValue", "maxValue",
    "x_pixels_in_detector", "y_pixels_in_detector", "image_depth",
}  # fmt: skip


@pytest.fixture(scope="module", params=["<", ">"], ids=["little-endian", "big-endian"])
def mccd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("mccd")
    return write_marccd(
        directory / "lys_0003.mccd", size_px=SIZE_PX, byte_order=request.param, frame_index=2
    )


def patched(source: Path, target: Path, offset: int, value: bytes) -> Path:
    """A copy of ``source`` with ``value`` written at ``offset``."""
    content = bytearray(source.read_bytes())
    content[offset : offset + len(value)] = value
    target.write_bytes(bytes(content))
    return target


def order_of(path: Path) -> str:
    return "<" if path.read_bytes()[:2] == b"II" else ">"


def test_metadata_in_legacy_units(mccd: Path) -> None:
    meta = read_meta(mccd)
    assert (meta.format_name, meta.width_px, meta.height_px, meta.bit_depth) == (
        "marccd",
        SIZE_PX,
        SIZE_PX,
        16,
    )
    # What the writer put in: 0.15 m, beam at centre + (12.25, −7.75) px, 300 mm / 192 px,
    # 0.97934 Å, phi 2 × 0.5°, 1 s exposure, saturation 65535.
    assert meta.distance_m == 0.15
    assert (meta.beam_center_x_px, meta.beam_center_y_px) == (108.25, 88.25)
    assert meta.pixel_size_x_m == meta.pixel_size_y_m == 1562500e-9
    assert meta.wavelength_a == 0.97934
    assert meta.saturation_value == 65535
    native = meta.native
    assert set(native) == LEGACY_KEYS
    assert native["filename"] == "lys_0003.mccd"
    assert native["filepath"] == str(mccd.parent)
    assert native["detector"] == "Rayonix MX-300" and native["beamline"] == "21-ID-D"
    assert "LS_CAT_Beamline='21-ID-D'" in native["comment"]
    assert (native["startPhi"], native["rotationRange"]) == (1.0, 0.5)
    assert (native["integrationTime"], native["exposureTime"], native["readoutTime"]) == (
        1.0,
        1.0,
        2.5,
    )
    assert native["photon_energy"] == pytest.approx(HC_EV_ANGSTROM / 0.97934)
    assert (native["x_pixels_in_detector"], native["image_depth"]) == (SIZE_PX, 2)


def test_pixels_match_pillow_and_header_statistics(mccd: Path) -> None:
    frame = open_frame(mccd, 1)
    with Image.open(mccd) as image:
        reference = np.asarray(image).astype(np.uint16)
    # widened to uint32 so that 65535 (an overload) is not the uint16 masked marker
    assert frame.pixels.dtype == np.uint32 and frame.pixels.shape == (SIZE_PX, SIZE_PX)
    assert frame.pixels.dtype.isnative and frame.mask is None
    np.testing.assert_array_equal(frame.pixels, reference)
    native = frame.meta.native
    assert native["maxValue"] == int(reference.max()) == 65535
    assert native["nSaturated"] == int(np.count_nonzero(reference == 65535)) > 0
    assert native["meanValue"] == pytest.approx(float(reference.mean()), abs=1e-3)


def test_header_is_read_in_the_files_byte_order(mccd: Path) -> None:
    (nfast_native,) = struct.unpack_from("=I", mccd.read_bytes(), 1104)
    swapped = order_of(mccd) != ("<" if np.little_endian else ">")
    assert (nfast_native != SIZE_PX) == swapped  # a host-order read would be wrong here
    assert read_meta(mccd).native["x_pixels_in_detector"] == SIZE_PX


def test_frame_number_other_than_one(mccd: Path) -> None:
    with pytest.raises(
        FrameRangeError, match=r"lys_0003\.mccd: frame 3 is outside the file's frames 1–1$"
    ):
        open_frame(mccd, 3)


def test_detector_and_beamline_guessed_without_comment(mccd: Path, tmp_path: Path) -> None:
    path = patched(mccd, tmp_path / "nocomment.mccd", 2464, b"\x00" * 512)
    native = read_meta(path).native
    assert (native["detector"], native["beamline"], native["comment"]) == ("Unknown", "21-ID", "")


def test_unterminated_strings_stay_inside_their_field(mccd: Path, tmp_path: Path) -> None:
    path = patched(mccd, tmp_path / "long.mccd", 2304, b"N" * 64)  # filename, no NUL
    assert read_meta(path).native["filename"] == "N" * 64


def test_mar_size_disagreeing_with_tiff_makes_a_generic_tiff(mccd: Path, tmp_path: Path) -> None:
    path = patched(mccd, tmp_path / "wrong_size.mccd", 1104, struct.pack(order_of(mccd) + "I", 99))
    assert type(detect_reader(path)).__name__ == "TiffReader"
    frame = open_frame(path, 1)
    assert frame.meta.format_name == "tiff"
    assert frame.meta.native == {"beam_center_is_default": True}
    np.testing.assert_array_equal(frame.pixels, open_frame(mccd, 1).pixels)


def test_missing_depth(mccd: Path, tmp_path: Path) -> None:
    order = order_of(mccd)
    path = patched(mccd, tmp_path / "nodepth.mccd", 1112, struct.pack(order + "I", 0))
    content = bytearray(path.read_bytes())
    entry = _ifd_entry_offset(bytes(content), 258)  # BitsPerSample -> an unknown private tag
    content[entry : entry + 2] = struct.pack(order + "H", 65000)
    path.write_bytes(bytes(content))
    for call in (read_meta, lambda p: open_frame(p, 1)):
        with pytest.raises(MissingMetadataError, match=r"nodepth\.mccd: no usable bit depth"):
            call(path)


def test_depth_from_tiff_when_header_has_none(mccd: Path, tmp_path: Path) -> None:
    path = patched(mccd, tmp_path / "tiffdepth.mccd", 1112, struct.pack(order_of(mccd) + "I", 0))
    assert read_meta(path).bit_depth == 16


def test_header_depth_disagreeing_with_tiff(mccd: Path, tmp_path: Path) -> None:
    path = patched(mccd, tmp_path / "depth4.mccd", 1112, struct.pack(order_of(mccd) + "I", 4))
    with pytest.raises(CorruptFrameError, match=r"depth4\.mccd: MAR header says 4 bytes"):
        read_meta(path)


def test_truncated_pixel_data(mccd: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.mccd"
    path.write_bytes(mccd.read_bytes()[:-1000])
    assert read_meta(path).width_px == SIZE_PX
    with pytest.raises(CorruptFrameError, match=r"cut\.mccd: truncated TIFF: \d+ of 73728 bytes"):
        open_frame(path, 1)


def test_truncated_mar_header(mccd: Path, tmp_path: Path) -> None:
    path = tmp_path / "short.mccd"
    path.write_bytes(mccd.read_bytes()[:2000])
    with pytest.raises(CorruptFrameError, match=r"short\.mccd: truncated MAR CCD header"):
        read_meta(path)


def test_directory_beyond_the_head_is_decided_by_the_extension(mccd: Path, tmp_path: Path) -> None:
    """The IFD moved to the end of the file: only `.mccd` tips it to the MAR reader."""
    content = bytearray(mccd.read_bytes())
    order = order_of(mccd)
    (count,) = struct.unpack_from(order + "H", content, 8)
    ifd = bytes(content[8 : 8 + 2 + 12 * count + 4])
    content[4:8] = struct.pack(order + "I", len(content))
    moved = bytes(content) + ifd
    as_mccd, as_tif = tmp_path / "moved.mccd", tmp_path / "moved.tif"
    as_mccd.write_bytes(moved)
    as_tif.write_bytes(moved)
    assert read_meta(as_mccd).format_name == "marccd"
    assert read_meta(as_mccd).beam_center_x_px == 108.25
    np.testing.assert_array_equal(open_frame(as_mccd, 1).pixels, open_frame(mccd, 1).pixels)
    assert read_meta(as_tif).format_name == "tiff"


def _ifd_entry_offset(content: bytes, tag: int) -> int:
    order = "<" if content[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", content, 4)
    (count,) = struct.unpack_from(order + "H", content, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from(order + "H", content, entry)[0] == tag:
            return entry
    raise AssertionError(f"tag {tag} not in the IFD")


def test_overloads_are_saturated_not_masked(mccd: Path) -> None:
    from imageserver.imaging.geometry import plan_view
    from imageserver.imaging.reduce import Flags, reduce_frame

    frame = open_frame(mccd, 1)
    reduced = reduce_frame(frame, plan_view(SIZE_PX, SIZE_PX, xsize=SIZE_PX))
    overloads = frame.pixels == 65535
    assert overloads.any()
    assert (reduced.flags[overloads] == Flags.SATURATED).all()
    assert not (reduced.flags == Flags.MASKED).any()
    assert reduced.saturated_source_px == int(overloads.sum())
