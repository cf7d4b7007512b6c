"""CBF reader: real Pilatus/Eiger CBFs against fabio's own decode, metadata, broken files."""

from __future__ import annotations

import bz2
import gzip
import re
from pathlib import Path

import fabio
import fabio.cbfimage
import numpy as np
import numpy.typing as npt
import pytest
from decoders import count_decoders

from imageserver.errors import CorruptFrameError, FrameRangeError
from imageserver.formats import open_frame, read_meta
from imageserver.formats.base import HC_EV_ANGSTROM
from imageserver.formats.cbf import MASKED_U32
from imageserver.sampledata.cbf import BAD_PIXELS, COUNT_CUTOFF, pilatus_geometry
from imageserver.sampledata.dataset import PILATUS_CBF
from imageserver.sampledata.pattern import module_gaps

THAU = "pilatus6m_thau_3_2_0001.cbf.bz2"
SMARGON = "pilatus6m_smargon_0001.cbf.gz"
EIGER16M = "eiger16m_therm_0001.cbf.gz"


def expected_pixels(path: Path) -> npt.NDArray[np.uint32]:
    """fabio's independent decode of the original file, negatives mapped to the marker."""
    reference = fabio.open(str(path)).data
    return np.where(reference < 0, MASKED_U32, reference).astype(np.uint32)


def test_thau_metadata_is_the_header_text(shared_data: Path) -> None:
    # Literal values of the file's header_contents:
    #   # Pixel_size 172e-6 m x 172e-6 m          # Wavelength 0.96859 A
    #   # Detector_distance 0.35100 m             # Beam_xy (1261.61, 1306.96) pixels
    #   # Count_cutoff 115897 counts              # Start_angle 89.9997 deg.
    #   # Angle_increment 0.0000 deg.             # Exposure_time 0.0190000 s
    meta = read_meta(shared_data / THAU)
    assert (meta.format_name, meta.width_px, meta.height_px, meta.bit_depth) == (
        "cbf",
        2463,
        2527,
        32,
    )
    assert (meta.first_frame, meta.last_frame) == (1, 1)
    assert meta.distance_m == 0.351
    assert meta.wavelength_a == 0.96859
    assert (meta.beam_center_x_px, meta.beam_center_y_px) == (1261.61, 1306.96)
    assert (meta.pixel_size_x_m, meta.pixel_size_y_m) == (172e-6, 172e-6)
    assert meta.saturation_value == 115897
    assert meta.native == {
        "filename": THAU,
        "filepath": str(shared_data / THAU),
        "detector": "PILATUS3 6M, S/N 60-0119",
        "detector_distance": 0.351,
        "rotationRange": 0.0,
        "startPhi": 89.9997,
        "wavelength": 0.96859,
        "photon_energy": pytest.approx(HC_EV_ANGSTROM / 0.96859),
        "beam_center_x": 1261.61,
        "beam_center_y": 1306.96,
        "x_pixel_size": 172e-6,
        "y_pixel_size": 172e-6,
        "integrationTime": 0.019,
        "image_depth": 4,
        "sensor_material": "Si",  # "# Silicon sensor, thickness 0.000450 m"
        "sensor_thickness": 0.00045,
    }


def test_thau_pixels_equal_fabio_with_negatives_masked(shared_data: Path) -> None:
    frame = open_frame(shared_data / THAU, 1)
    assert frame.pixels.dtype == np.uint32 and frame.pixels.shape == (2527, 2463)
    assert frame.pixels.flags.c_contiguous and frame.mask is None and frame.number == 1
    np.testing.assert_array_equal(frame.pixels, expected_pixels(shared_data / THAU))
    assert frame.pixels[195, 100] == MASKED_U32  # first row of the horizontal module gap
    assert frame.pixels[100, 487] == MASKED_U32  # first column of the vertical module gap
    assert int(frame.pixels[frame.pixels != MASKED_U32].max()) == 114000  # a strong spot


def test_bz2_frame_is_decompressed_exactly_once(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bzip2 path (BZ2File, bz2.open, bz2.decompress) counts: detection's sniff included.

    A pass of the frame decodes the stored file once: one decoder fed every stored byte once,
    producing the content once. The metadata needs only the head (the first bzip2 block).
    """
    path = shared_data / THAU
    stored_bytes = path.stat().st_size
    content_bytes = len(bz2.decompress(path.read_bytes()))
    count = count_decoders(monkeypatch, "bz2")

    read_meta(path)
    assert count.made == 1
    assert 0 < count.fed_bytes < stored_bytes // 2
    assert 0 < count.produced_bytes < content_bytes // 4

    count.made = count.fed_bytes = count.produced_bytes = 0
    open_frame(path, 1)
    assert (count.made, count.fed_bytes, count.produced_bytes) == (
        1,
        stored_bytes,
        content_bytes,
    )


def test_full_imgcif_cbf(shared_data: Path) -> None:
    frame = open_frame(shared_data / SMARGON, 1)
    assert frame.pixels.shape == (2527, 2463) and frame.pixels.dtype == np.uint32
    np.testing.assert_array_equal(frame.pixels, expected_pixels(shared_data / SMARGON))
    meta = frame.meta
    assert (meta.width_px, meta.height_px, meta.bit_depth) == (2463, 2527, 32)
    assert (meta.distance_m, meta.wavelength_a, meta.saturation_value) == (0.29147, 0.97625, 91795)
    assert (meta.beam_center_x_px, meta.beam_center_y_px) == (1229.3, 1200.48)
    assert meta.native["startPhi"] == 45.0 and meta.native["rotationRange"] == 0.1


def test_imgcif_categories_when_there_is_no_pilatus_header(
    shared_data: Path, tmp_path: Path
) -> None:
    content = gzip.decompress((shared_data / SMARGON).read_bytes())
    stripped = re.sub(
        rb"_array_data\.header_convention[^\n]*\n_array_data\.header_contents\r?\n;.*?\n;\r?\n",
        b"",
        content,
        count=1,
        flags=re.DOTALL,
    )
    assert b"# Wavelength" not in stripped and len(stripped) < len(content)
    path = tmp_path / "imgcif_only.cbf"
    path.write_bytes(stripped)
    meta = read_meta(path)
    # _diffrn_radiation_wavelength.wavelength, _diffrn_measurement.sample_detector_distance
    # (mm), _array_element_size.size (m), _array_intensities.overload:
    assert meta.wavelength_a == 0.97625
    assert meta.distance_m == pytest.approx(0.29147)
    assert (meta.pixel_size_x_m, meta.pixel_size_y_m) == (0.000172, 0.000172)
    assert meta.saturation_value == 91795
    assert (meta.beam_center_x_px, meta.beam_center_y_px) == (None, None)
    assert "beam_center_x" not in meta.native and "detector" not in meta.native
    assert (
        open_frame(path, 1).pixels[1000, 1000] == expected_pixels(shared_data / SMARGON)[1000, 1000]
    )


@pytest.mark.slow
def test_eiger16m_cbf_gaps_are_masked(shared_data: Path) -> None:
    frame = open_frame(shared_data / EIGER16M, 1)
    assert frame.pixels.shape == (4362, 4148) and frame.pixels.dtype == np.uint32
    expected = expected_pixels(shared_data / EIGER16M)
    np.testing.assert_array_equal(frame.pixels, expected)
    usable = frame.pixels[frame.pixels != MASKED_U32]
    assert 300 < int(usable.max()) < 500  # sparse frame, "max ~400"
    assert frame.pixels[514, 0] == MASKED_U32  # first row of the gap below module row 1
    assert frame.meta.saturation_value == 65535
    assert (frame.meta.beam_center_x_px, frame.meta.beam_center_y_px) == (2216.06, 2300.41)


def test_generated_pilatus_frame(sample_dir: Path) -> None:
    path = sample_dir / PILATUS_CBF
    frame = open_frame(path, 1)
    geometry = pilatus_geometry()
    assert frame.meta.beam_center_x_px == round(geometry.beam_x_px, 2)
    assert frame.meta.distance_m == geometry.distance_m
    assert frame.meta.wavelength_a == geometry.wavelength_a
    assert frame.meta.saturation_value == COUNT_CUTOFF
    np.testing.assert_array_equal(frame.pixels, expected_pixels(path))
    gaps = module_gaps(2463, 2527, 487, 195, 7, 17)
    assert np.all(frame.pixels[gaps] == MASKED_U32)
    assert np.count_nonzero(frame.pixels == MASKED_U32) == np.count_nonzero(gaps) + BAD_PIXELS


def test_generated_bz2_frame_equals_its_plain_twin(sample_dir: Path) -> None:
    wrapped = sample_dir / "pilatus6m_0002.cbf.bz2"
    plain = sample_dir / "pilatus6m_0002.cbf"
    np.testing.assert_array_equal(open_frame(wrapped, 1).pixels, open_frame(plain, 1).pixels)
    assert read_meta(wrapped).native["startPhi"] == 0.1


def test_corrupt_bz2_frame(sample_dir: Path, tmp_path: Path) -> None:
    stored = bytearray((sample_dir / "pilatus6m_0002.cbf.bz2").read_bytes())
    middle = len(stored) // 2
    stored[middle : middle + 64] = bytes(byte ^ 0x5A for byte in stored[middle : middle + 64])
    path = tmp_path / "flipped_0002.cbf.bz2"
    path.write_bytes(bytes(stored))
    assert read_meta(path).width_px == 2463  # the first bz2 block is intact
    with pytest.raises(CorruptFrameError, match=r"flipped_0002\.cbf\.bz2: corrupt bz2 stream"):
        open_frame(path, 1)


def test_frame_number_other_than_one(sample_dir: Path) -> None:
    with pytest.raises(
        FrameRangeError, match=r"pilatus6m_0001\.cbf: frame 2 is outside the file's frames 1–1$"
    ):
        open_frame(sample_dir / PILATUS_CBF, 2)


def test_a_text_header_longer_than_fabios_first_look(tmp_path: Path) -> None:
    """fabio looks for the binary section in the first 8 kB, then parses the rest as CIF."""
    data = np.arange(20 * 30, dtype=np.int32).reshape(20, 30) - 5
    short = tmp_path / "short.cbf"
    fabio.cbfimage.CbfImage(
        data=data, header={"_array_data.header_contents": "# Wavelength 1.1 A"}
    ).write(str(short))
    content = short.read_bytes()
    comments = b"".join(b"# comment line %05d %s\r\n" % (n, b"." * 40) for n in range(200))
    path = tmp_path / "long_0001.cbf"
    at = content.index(b"data_")
    path.write_bytes(content[:at] + comments + content[at:])
    assert path.read_bytes().index(b"--CIF-BINARY-FORMAT-SECTION--") > 8192

    frame = open_frame(path, 1)

    np.testing.assert_array_equal(
        frame.pixels, np.where(data < 0, MASKED_U32, data).astype(np.uint32)
    )
    assert frame.meta.wavelength_a == read_meta(path).wavelength_a == 1.1


def test_truncated_binary_section(sample_dir: Path, tmp_path: Path) -> None:
    content = (sample_dir / PILATUS_CBF).read_bytes()
    path = tmp_path / "cut_0001.cbf"
    path.write_bytes(content[: len(content) - 100_000])
    assert read_meta(path).width_px == 2463  # the header is intact
    with pytest.raises(CorruptFrameError, match=r"cut_0001\.cbf: truncated CBF: \d+ of \d+ bytes"):
        open_frame(path, 1)


def test_cut_before_the_binary_data_starts(sample_dir: Path, tmp_path: Path) -> None:
    content = (sample_dir / PILATUS_CBF).read_bytes()
    path = tmp_path / "header_only.cbf"
    path.write_bytes(content[: content.index(b"--CIF-BINARY-FORMAT-SECTION--") + 40])
    for call in (read_meta, lambda p: open_frame(p, 1)):
        with pytest.raises(CorruptFrameError, match=r"header_only\.cbf: truncated CBF"):
            call(path)


def test_cbf_text_without_binary_section(tmp_path: Path) -> None:
    path = tmp_path / "text.cbf"
    path.write_bytes(b"###CBF: VERSION 1.5\r\ndata_x\r\n_array_data.header_convention x\r\n")
    with pytest.raises(CorruptFrameError, match=r"text\.cbf: CBF has no binary section"):
        read_meta(path)


def test_other_element_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "int16.cbf"
    fabio.cbfimage.CbfImage(data=np.ones((4, 6), dtype=np.int16)).write(str(path))
    with pytest.raises(CorruptFrameError, match=r"int16\.cbf: CBF element type 'signed 16-bit"):
        open_frame(path, 1)
