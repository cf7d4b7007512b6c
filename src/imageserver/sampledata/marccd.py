"""MAR CCD (Rayonix) TIFF frames in either byte order, and plain "monitor" TIFFs.

No real ``.mccd`` file is available to the project, so this writes the layout the legacy
reader expects (legacy-server.md §3.3): a classic uncompressed 16-bit TIFF whose directory
sits before byte 1024, the 3072-byte MAR ``frame_header`` at 1024 with its fields in the
file's byte order, and the pixels from byte 4096 on, in four strips.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imageserver.sampledata.pattern import Geometry, centred_geometry, module_gaps, synth_frame

MAR_HEADER_OFFSET = 1024
MAR_DATA_OFFSET = 4096
MAR_SATURATION = 65535
MAR_DETECTOR_WIDTH_M = 0.3  # Rayonix MX-300: 300 mm across, whatever the binning
MAR_COMMENT = "detector='Rayonix MX-300' LS_CAT_Beamline='21-ID-D' sample='synthetic lysozyme'"
MAR_STRIPS = 4
_LITTLE_ENDIAN, _BIG_ENDIAN = 1234, 4321
"""The MAR header's byte-order codes (header_byte_order, data_byte_order)."""

_SHORT, _LONG = 3, 4


def marccd_geometry(size_px: int) -> Geometry:
    """A square MX-300 binned to ``size_px``, with a pixel size that is a whole nanometre."""
    pixel_nm = round(MAR_DETECTOR_WIDTH_M / size_px * 1e9)
    return centred_geometry(size_px, size_px, pixel_nm / 1e9, distance_m=0.15)


def write_marccd(
    path: Path,
    *,
    size_px: int = 2048,
    byte_order: str = "<",
    frame_index: int = 0,
    seed: int = 2026,
) -> Path:
    """A square MAR CCD frame of ``size_px`` with a consistent header; ``byte_order`` "<" or ">"."""
    if byte_order not in ("<", ">"):
        raise ValueError("byte_order must be '<' or '>'")
    geometry = marccd_geometry(size_px)
    pixels = synth_frame(geometry, frame_index, MAR_SATURATION, seed).astype(np.uint16)
    rows_per_strip = -(-size_px // MAR_STRIPS)
    strip_bytes = [
        min(rows_per_strip, size_px - row) * size_px * 2
        for row in range(0, size_px, rows_per_strip)
    ]
    strip_offsets = [MAR_DATA_OFFSET + sum(strip_bytes[:i]) for i in range(len(strip_bytes))]
    tiff = _tiff_directory(
        byte_order, size_px, size_px, 16, rows_per_strip, strip_offsets, strip_bytes
    )
    if len(tiff) > MAR_HEADER_OFFSET:
        raise ValueError(f"TIFF directory of {len(tiff)} bytes does not fit before the MAR header")
    header = _mar_header(byte_order, geometry, pixels, frame_index, path)
    body = pixels.astype(f"{byte_order}u2").tobytes()
    path.write_bytes(tiff.ljust(MAR_HEADER_OFFSET, b"\x00") + header + body)
    return path


def write_monitor_tiff(path: Path, width_px: int, height_px: int, bit_depth: int) -> Path:
    """A plain little-endian TIFF as an Eiger monitor serves it: one strip, no geometry.

    Eiger module gaps (1030 × 514 modules, 10/37-pixel gaps) carry the dtype's maximum.
    """
    if bit_depth not in (16, 32):
        raise ValueError("bit_depth must be 16 or 32")
    dtype = np.uint16 if bit_depth == 16 else np.uint32
    top = int(np.iinfo(dtype).max)
    geometry = centred_geometry(width_px, height_px, 75e-6)
    counts = synth_frame(geometry, 0, top - 1).astype(dtype)
    counts[module_gaps(width_px, height_px, 1030, 514, 10, 37)] = top
    data = counts.astype(f"<u{bit_depth // 8}").tobytes()
    data_offset = 256
    tiff = _tiff_directory(
        "<", width_px, height_px, bit_depth, height_px, [data_offset], [len(data)]
    )
    path.write_bytes(tiff.ljust(data_offset, b"\x00") + data)
    return path


def _tiff_directory(
    order: str,
    width_px: int,
    height_px: int,
    bits: int,
    rows_per_strip: int,
    strip_offsets: list[int],
    strip_bytes: list[int],
) -> bytes:
    """TIFF header and first IFD at offset 8; strip tables (if >1 strip) right after it."""
    entry_count = 9
    ifd_end = 8 + 2 + 12 * entry_count + 4
    n = len(strip_offsets)
    offsets_at, counts_at = ifd_end, ifd_end + 4 * n
    entries = [
        (256, _LONG, 1, width_px),
        (257, _LONG, 1, height_px),
        (258, _SHORT, 1, bits),
        (259, _SHORT, 1, 1),  # no compression
        (262, _SHORT, 1, 1),  # BlackIsZero
        (273, _LONG, n, strip_offsets[0] if n == 1 else offsets_at),
        (277, _SHORT, 1, 1),
        (278, _LONG, 1, rows_per_strip),
        (279, _LONG, n, strip_bytes[0] if n == 1 else counts_at),
    ]
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    out = bytearray(magic + struct.pack(order + "I", 8) + struct.pack(order + "H", entry_count))
    for tag, kind, count, value in entries:
        out += struct.pack(order + "HHI", tag, kind, count)
        out += _inline(order, kind, count, value)
    out += struct.pack(order + "I", 0)  # no next IFD
    if n > 1:
        out += struct.pack(f"{order}{n}I", *strip_offsets) + struct.pack(
            f"{order}{n}I", *strip_bytes
        )
    return bytes(out)


def _inline(order: str, kind: int, count: int, value: int) -> bytes:
    """A 4-byte value field: a SHORT is left-justified, as TIFF requires."""
    if kind == _SHORT and count == 1:
        return struct.pack(order + "HH", value, 0)
    return struct.pack(order + "I", value)


def _mar_header(
    order: str,
    geometry: Geometry,
    pixels: npt.NDArray[np.uint16],
    frame_index: int,
    path: Path,
) -> bytes:
    """The 3072-byte frame_header; offsets are absolute file offsets minus 1024."""
    header = bytearray(3072)
    code = _LITTLE_ENDIAN if order == "<" else _BIG_ENDIAN
    pixel_nm = round(geometry.pixel_size_m * 1e9)

    def put(offset: int, fmt: str, value: int) -> None:
        struct.pack_into(order + fmt, header, offset - MAR_HEADER_OFFSET, value)

    def put_text(offset: int, length: int, text: str) -> None:
        raw = text.encode("latin-1")[: length - 1]
        header[offset - MAR_HEADER_OFFSET : offset - MAR_HEADER_OFFSET + len(raw)] = raw

    header[4:7] = b"MMX"
    for offset, fmt, value in (
        (1052, "I", code),  # header_byte_order
        (1056, "I", code),  # data_byte_order
        (1060, "I", 3072),  # header_size
        (1104, "I", geometry.width_px),  # nfast
        (1108, "I", geometry.height_px),  # nslow
        (1112, "I", 2),  # depth (bytes)
        (1116, "I", geometry.width_px),  # record_length
        (1120, "I", 16),  # signif_bits
        (1228, "I", MAR_SATURATION),  # saturation_level
        (1304, "I", int(pixels.min())),
        (1308, "I", int(pixels.max())),
        (1312, "I", round(float(pixels.mean()) * 1000)),
        (1316, "I", round(float(np.sqrt(np.mean(np.square(pixels, dtype=np.float64)))) * 1000)),
        (1324, "I", int(np.count_nonzero(pixels >= MAR_SATURATION))),
        (1664, "i", round(geometry.distance_m * 1e6)),  # xtal_to_detector, µm
        (1668, "i", round(geometry.beam_x_px * 1000)),
        (1672, "i", round(geometry.beam_y_px * 1000)),
        (1676, "i", 1000),  # integration_time, ms
        (1680, "i", 1000),  # exposure_time, ms
        (1684, "i", 2500),  # readout_time, ms
        (1708, "i", frame_index * 500),  # start_phi, millidegrees
        (1760, "i", 500),  # rotation_range, millidegrees
        (1796, "i", pixel_nm),
        (1800, "i", pixel_nm),
        (1932, "i", round(geometry.wavelength_a * 1e5)),  # source_wavelength, fm
    ):
        put(offset, fmt, value)
    put_text(2176, 128, str(path.parent))
    put_text(2304, 64, path.name)
    put_text(2368, 32, "2026-01-01T00:00:00")
    put_text(2464, 512, MAR_COMMENT)
    return bytes(header)
