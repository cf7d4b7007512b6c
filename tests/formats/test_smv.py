"""SMV/ADSC reader: files written by fabio's d*TREK writer and by hand in ADSC style."""

from __future__ import annotations

from pathlib import Path

import fabio.dtrekimage
import numpy as np
import pytest

from imageserver.errors import CorruptFrameError, FrameRangeError
from imageserver.formats import open_frame, read_meta
from imageserver.formats.smv import SmvReader
from imageserver.imaging.geometry import plan_view
from imageserver.imaging.reduce import Flags, reduce_frame

ADSC_HEADER = (
    "{\nHEADER_BYTES=  512;\nDIM=2;\nBYTE_ORDER=big_endian;\nTYPE=unsigned_short;\n"
    "SIZE1=48;\nSIZE2=32;\nPIXEL_SIZE=0.1024;\nDISTANCE=250.00;\nWAVELENGTH=0.97949;\n"
    "BEAM_CENTER_X=2.56;\nBEAM_CENTER_Y=1.536;\nOSC_START=10.000;\nOSC_RANGE=0.500;\n"
    "DETECTOR_SN=901;\n}\f"
)


@pytest.fixture
def counts() -> np.ndarray:
    return (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 37 % 65535).astype(np.uint16)


@pytest.fixture
def adsc_file(tmp_path: Path, counts: np.ndarray) -> Path:
    path = tmp_path / "adsc_0001.img"
    header = ADSC_HEADER.encode("ascii").ljust(512, b" ")
    path.write_bytes(header + counts.astype(">u2").tobytes())
    return path


def test_adsc_style_big_endian_file(adsc_file: Path, counts: np.ndarray) -> None:
    frame = open_frame(adsc_file, 1)
    np.testing.assert_array_equal(frame.pixels, counts)
    # widened, so that 65535 (an overload) is not the uint16 masked marker
    assert frame.pixels.dtype == np.uint32 and frame.pixels.dtype.isnative
    meta = frame.meta
    assert (meta.format_name, meta.width_px, meta.height_px, meta.bit_depth) == ("smv", 48, 32, 16)
    assert meta.saturation_value == 65535  # no SATURATED_VALUE: the 16-bit overload
    assert meta.beam_center_x_px == pytest.approx(25.0)  # 2.56 mm / 0.1024 mm
    assert meta.beam_center_y_px == pytest.approx(15.0)
    assert meta.distance_m == 0.25 and meta.wavelength_a == 0.97949
    assert meta.pixel_size_x_m == pytest.approx(0.1024e-3)
    assert meta.native["OSC_RANGE"] == "0.500" and meta.native["DETECTOR_SN"] == "901"


def test_file_written_by_fabio(tmp_path: Path, counts: np.ndarray) -> None:
    path = tmp_path / "fabio_0001.img"
    header = {"PIXEL_SIZE": "0.172", "DISTANCE": "180.0", "WAVELENGTH": "1.0332"}
    fabio.dtrekimage.DtrekImage(data=counts, header=header).write(str(path))
    frame = open_frame(path, 1)
    np.testing.assert_array_equal(frame.pixels, counts)
    assert (frame.meta.distance_m, frame.meta.wavelength_a) == (0.18, 1.0332)
    assert (frame.meta.beam_center_x_px, frame.meta.beam_center_y_px) == (None, None)


def test_truncated_smv(adsc_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut_0001.img"
    path.write_bytes(adsc_file.read_bytes()[:-100])
    assert read_meta(path).width_px == 48
    with pytest.raises(CorruptFrameError, match=r"cut_0001\.img: truncated SMV: 1486 of 1536"):
        open_frame(path, 1)


def test_unsupported_pixel_type(adsc_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "float_0001.img"
    path.write_bytes(adsc_file.read_bytes().replace(b"TYPE=unsigned_short", b"TYPE=float_ieee_x"))
    with pytest.raises(CorruptFrameError, match=r"float_0001\.img: SMV pixel type 'float_ieee_x'"):
        read_meta(path)


def test_header_bytes_not_a_number(tmp_path: Path) -> None:
    path = tmp_path / "bad_0001.img"
    path.write_bytes(b"{\nHEADER_BYTES=lots;\n}")
    with pytest.raises(CorruptFrameError, match=r"bad_0001\.img: SMV HEADER_BYTES is not a number"):
        read_meta(path)


def test_frame_number_other_than_one(adsc_file: Path) -> None:
    with pytest.raises(
        FrameRangeError, match=r"adsc_0001\.img: frame 0 is outside the file's frames 1–1$"
    ):
        open_frame(adsc_file, 0)


def test_an_overload_is_saturated_not_a_masked_gap(tmp_path: Path, counts: np.ndarray) -> None:
    """ADSC writes an overloaded pixel as 65535; as uint16 that would be the gap marker."""
    counts[3, 5] = counts[10, 20:23] = 65535
    path = tmp_path / "overload_0001.img"
    path.write_bytes(ADSC_HEADER.encode("ascii").ljust(512, b" ") + counts.astype(">u2").tobytes())

    frame = open_frame(path, 1)
    reduced = reduce_frame(frame, plan_view(48, 32, xsize=48))

    overloads = frame.pixels == 65535
    assert int(overloads.sum()) == 4 and frame.meta.saturation_value == 65535
    assert (reduced.flags[overloads] == Flags.SATURATED).all()
    assert not (reduced.flags == Flags.MASKED).any()
    assert reduced.saturated_source_px == 4


def test_saturated_value_of_the_header_wins(adsc_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "saturated_0001.img"
    path.write_bytes(adsc_file.read_bytes().replace(b"DIM=2;\n", b"SATURATED_VALUE=60000;\n"))
    assert read_meta(path).saturation_value == 60000


@pytest.mark.parametrize("size1", [b"-4", b"0.", b"4e", b"xx"])
def test_a_bad_size_is_a_corrupt_frame_naming_the_file(
    adsc_file: Path, tmp_path: Path, size1: bytes
) -> None:
    """SIZE1=-4 made numpy raise ValueError; every such header is the reader's own error."""
    path = tmp_path / "bad_size_0001.img"
    path.write_bytes(adsc_file.read_bytes().replace(b"SIZE1=48;", b"SIZE1=" + size1 + b";"))
    calls = (
        read_meta,
        lambda p: open_frame(p, 1),
        SmvReader().read_meta,
        lambda p: SmvReader().read_frame(p, 1),
    )
    for call in calls:
        with pytest.raises(CorruptFrameError, match=r"bad_size_0001\.img: .*(SIZE1|-?\d+ x 32)"):
            call(path)


@pytest.mark.parametrize("value", [b"inf", b"nan", b"1e999"])
def test_non_finite_numbers_are_ignored(adsc_file: Path, tmp_path: Path, value: bytes) -> None:
    path = tmp_path / "odd_0001.img"
    content = adsc_file.read_bytes().replace(b"DIM=2;\n", b"SATURATED_VALUE=" + value + b";\n")
    path.write_bytes(content.replace(b"DISTANCE=250.00;", b"DISTANCE=" + value + b";"))
    meta = read_meta(path)
    assert (meta.saturation_value, meta.distance_m) == (65535, None)


def test_an_absurd_header_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge_header_0001.img"
    path.write_bytes(b"{\nHEADER_BYTES=99999999999;\n}")
    with pytest.raises(CorruptFrameError, match=r"huge_header_0001\.img: SMV HEADER_BYTES"):
        read_meta(path)
