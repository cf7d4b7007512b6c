"""Sample writers for CBF, MAR CCD and monitor TIFF, checked with independent readers."""

from __future__ import annotations

import bz2
import gzip
import struct
from pathlib import Path

import fabio
import numpy as np
import pytest
from PIL import Image

from imageserver.sampledata.cbf import (
    BAD_PIXELS,
    COUNT_CUTOFF,
    pilatus_geometry,
    pilatus_header_contents,
    write_pilatus_cbf,
)
from imageserver.sampledata.marccd import write_marccd, write_monitor_tiff
from imageserver.sampledata.pattern import module_gaps


@pytest.fixture(scope="module")
def cbf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cbf-writer")
    write_pilatus_cbf(directory / "p_0001.cbf", compression="bz2")
    write_pilatus_cbf(directory / "p_0002.cbf", frame_index=1, compression="gz")
    return directory


def test_pilatus_cbf_as_fabio_reads_it(cbf_dir: Path) -> None:
    image = fabio.open(str(cbf_dir / "p_0001.cbf"))
    assert image.data.dtype == np.int32 and image.data.shape == (2527, 2463)
    assert image.header["_array_data.header_contents"] == pilatus_header_contents(
        pilatus_geometry(), 0
    )
    assert image.header["X-Binary-Size-Fastest-Dimension"] == "2463"
    assert image.header["conversions"] == "x-CBF_BYTE_OFFSET"
    gaps = module_gaps(2463, 2527, 487, 195, 7, 17)
    assert np.all(image.data[gaps] == -1)
    assert np.count_nonzero(image.data == -2) == BAD_PIXELS
    assert not np.any(image.data[gaps] == -2)  # bad pixels sit on sensitive pixels
    assert int(image.data.max()) == COUNT_CUTOFF  # a few overloads hit the cutoff
    assert int(np.median(image.data[~gaps])) > 0


def test_pilatus_header_lines(cbf_dir: Path) -> None:
    text = pilatus_header_contents(pilatus_geometry(), 3)
    assert "# Pixel_size 172e-6 m x 172e-6 m\r\n" in text
    assert "# Count_cutoff 1048575 counts\r\n" in text
    assert "# Beam_xy (1243.75, 1255.75) pixels\r\n" in text
    assert "# Start_angle 0.3000 deg.\r\n" in text
    assert "# Wavelength 0.97934 A\r\n# Detector_distance 0.25000 m\r\n" in text


def test_wrapped_cbf_files(cbf_dir: Path) -> None:
    plain = (cbf_dir / "p_0001.cbf").read_bytes()
    assert bz2.decompress((cbf_dir / "p_0001.cbf.bz2").read_bytes()) == plain
    assert (
        gzip.decompress((cbf_dir / "p_0002.cbf.gz").read_bytes())
        == (cbf_dir / "p_0002.cbf").read_bytes()
    )
    assert write_pilatus_cbf(cbf_dir / "p_0001.cbf", compression=None) == cbf_dir / "p_0001.cbf"
    assert (cbf_dir / "p_0001.cbf").read_bytes() == plain  # deterministic for the same seed
    first = fabio.open(str(cbf_dir / "p_0001.cbf")).data
    second = fabio.open(str(cbf_dir / "p_0002.cbf")).data
    assert np.count_nonzero(first != second) > 100_000  # the next frame differs
    with pytest.raises(ValueError, match="compression"):
        write_pilatus_cbf(cbf_dir / "x.cbf", compression="zip")


@pytest.mark.parametrize("order", ["<", ">"])
def test_marccd_layout(tmp_path: Path, order: str) -> None:
    path = write_marccd(tmp_path / "m_0001.mccd", size_px=128, byte_order=order, frame_index=1)
    content = path.read_bytes()
    assert content[:4] == (b"II*\x00" if order == "<" else b"MM\x00*")
    assert len(content) == 4096 + 128 * 128 * 2

    def field(offset: int, code: str = "I") -> int:
        return struct.unpack_from(order + code, content, offset)[0]

    assert (field(1104), field(1108), field(1112), field(1228)) == (128, 128, 2, 65535)
    assert field(1052) == (1234 if order == "<" else 4321)  # header_byte_order
    assert field(1664, "i") == 150_000  # xtal_to_detector: 150 mm in µm
    assert (field(1668, "i"), field(1672, "i")) == (76_250, 56_250)  # beam, px × 1000
    assert field(1708, "i") == 500 and field(1760, "i") == 500  # start_phi, rotation_range
    assert field(1796, "i") == field(1800, "i") == 2_343_750  # 300 mm / 128 px in nm
    assert field(1932, "i") == 97_934  # wavelength in fm
    assert content[2304:2318] == b"m_0001.mccd\x00\x00\x00"
    assert b"detector='Rayonix MX-300' LS_CAT_Beamline='21-ID-D'" in content[2464:2976]
    with Image.open(path) as image:
        assert image.size == (128, 128)
        reference = np.asarray(image).astype(np.uint16)
    stored = np.frombuffer(content, dtype=order + "u2", offset=4096).reshape(128, 128)
    np.testing.assert_array_equal(stored, reference)
    assert field(1308) == int(reference.max()) and field(1304) == int(reference.min())
    assert field(1324) == int(np.count_nonzero(reference == 65535))


def test_marccd_rejects_unknown_byte_order(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="byte_order"):
        write_marccd(tmp_path / "x.mccd", size_px=16, byte_order="=")


@pytest.mark.parametrize(("bits", "mode"), [(16, "I;16"), (32, "I")])
def test_monitor_tiff(tmp_path: Path, bits: int, mode: str) -> None:
    path = write_monitor_tiff(tmp_path / "mon.tif", 1040, 520, bits)
    with Image.open(path) as image:
        assert image.size == (1040, 520) and image.mode == mode
    data = fabio.open(str(path)).data
    assert data.dtype == (np.uint16 if bits == 16 else np.uint32)
    top = np.iinfo(data.dtype).max
    assert np.all(data[:, 1030:1040] == top) and np.all(data[514:, :] == top)
    assert int(data[:514, :1030].max()) == top - 1  # saturated spots stay below the marker
    with pytest.raises(ValueError, match="bit_depth"):
        write_monitor_tiff(tmp_path / "bad.tif", 8, 8, 8)
