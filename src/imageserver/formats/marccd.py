"""MAR CCD / Rayonix TIFF: the 3072-byte MAR header at offset 1024, read in the file's byte order.

The legacy server read the header in the host's byte order; here the TIFF byte order rules,
so big-endian files from old Rayonix hosts read correctly. Field offsets and unit conversions
follow the legacy reader (legacy-server.md §3.3, legacy-fork-2025.md §10); ``native`` keeps
its camelCase names. A zero in a geometry field means "not recorded": the typed field is None
while ``native`` keeps the converted zero, as the legacy JSON did.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError, MissingMetadataError
from imageserver.formats.base import (
    HC_EV_ANGSTROM,
    Frame,
    FrameMeta,
    check_frame_size,
    frame_range_error,
)
from imageserver.formats.compressed import read_bytes, read_head
from imageserver.formats.tiff import (
    TiffLayout,
    is_marccd_head,
    layout_of,
    parse_tiff_layout,
    read_tiff_pixels,
)

MARCCD_HEADER_END = 1024 + 3072

_INTEGERS: dict[str, tuple[int, str]] = {
    "nfast": (1104, "I"),
    "nslow": (1108, "I"),
    "depth": (1112, "I"),
    "saturation_level": (1228, "I"),
    "min": (1304, "I"),
    "max": (1308, "I"),
    "mean": (1312, "I"),
    "rms": (1316, "I"),
    "n_saturated": (1324, "I"),
    "xtal_to_detector": (1664, "i"),
    "beam_x": (1668, "i"),
    "beam_y": (1672, "i"),
    "integration_time": (1676, "i"),
    "exposure_time": (1680, "i"),
    "readout_time": (1684, "i"),
    "start_phi": (1708, "i"),
    "rotation_range": (1760, "i"),
    "pixelsize_x": (1796, "i"),
    "pixelsize_y": (1800, "i"),
    "source_wavelength": (1932, "i"),
}
"""Header field -> (absolute file offset, struct code)."""

_STRINGS: dict[str, tuple[int, int]] = {
    "filepath": (2176, 128),
    "filename": (2304, 64),
    "file_comment": (2464, 512),
}
"""Header string -> (absolute file offset, field length); NUL-terminated inside the field."""

_DETECTOR_BY_NSLOW = {
    3072: "Rayonix MX-225",
    1536: "Rayonix MX-225",
    768: "Rayonix MX-225",
    4096: "Rayonix MX-300",
    2048: "Rayonix MX-300",
    1024: "Rayonix MX-300",
}


class MarCCDReader:
    """MAR CCD / Rayonix ``.mccd``: a TIFF whose MAR header agrees with its size."""

    format_name: ClassVar[str] = "marccd"
    extensions: ClassVar[tuple[str, ...]] = (".mccd",)

    @classmethod
    def sniff(cls, head: bytes, suffix: str) -> bool:
        return is_marccd_head(head, suffix)

    def read_meta(self, path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> FrameMeta:
        head = read_head(path, limits=limits).head
        return _marccd_meta(path, head, layout_of(path, head, limits), limits)

    def frame_files(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> tuple[str, ...]:
        return ()  # one file holds everything

    def read_frame(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> Frame:
        if number != 1:
            raise frame_range_error(path, number, 1, 1)
        content = read_bytes(path, limits=limits)
        layout = parse_tiff_layout(content, path)
        meta = _marccd_meta(path, content, layout, limits)
        pixels = read_tiff_pixels(content, layout, meta.bit_depth, path)
        if pixels.dtype == np.uint16:
            # MAR CCD has no gap marker: its 65535 is an overload, which must stay a value
            # (saturated, red) rather than the uint16 masked marker of the Frame contract.
            pixels = pixels.astype(np.uint32)
        return Frame(pixels=pixels, mask=None, meta=meta, number=number, path=path)


def read_marccd_header(data: bytes, byte_order: str, path: Path) -> dict[str, Any]:
    """The raw header fields (integers as stored, strings decoded) from the file's bytes."""
    if len(data) < MARCCD_HEADER_END:
        raise CorruptFrameError(
            f"{path}: truncated MAR CCD header: the file has {len(data)} bytes, "
            f"the header ends at byte {MARCCD_HEADER_END}"
        )
    fields: dict[str, Any] = {
        name: struct.unpack_from(byte_order + code, data, offset)[0]
        for name, (offset, code) in _INTEGERS.items()
    }
    for name, (offset, length) in _STRINGS.items():
        raw = data[offset : offset + length].split(b"\x00", 1)[0]
        fields[name] = raw.decode("latin-1").strip()
    return fields


def _marccd_meta(path: Path, data: bytes, layout: TiffLayout, limits: LimitSettings) -> FrameMeta:
    check_frame_size(path, layout.width_px, layout.height_px, limits)
    raw = read_marccd_header(data, layout.byte_order, path)
    if (raw["nfast"], raw["nslow"]) != (layout.width_px, layout.height_px):
        raise CorruptFrameError(
            f"{path}: MAR header says {raw['nfast']} x {raw['nslow']} pixels "
            f"but the TIFF says {layout.width_px} x {layout.height_px}"
        )
    bit_depth = _bit_depth(path, raw["depth"], layout.bits_per_sample)
    native = _native(raw, bit_depth)
    beam_known = raw["beam_x"] != 0 or raw["beam_y"] != 0
    return FrameMeta(
        format_name=MarCCDReader.format_name,
        width_px=layout.width_px,
        height_px=layout.height_px,
        bit_depth=bit_depth,
        beam_center_x_px=native["beam_center_x"] if beam_known else None,
        beam_center_y_px=native["beam_center_y"] if beam_known else None,
        distance_m=native["detector_distance"] or None,
        wavelength_a=native["wavelength"] or None,
        pixel_size_x_m=native["x_pixel_size"] or None,
        pixel_size_y_m=native["y_pixel_size"] or None,
        saturation_value=raw["saturation_level"] or None,
        native=native,
    )


def _bit_depth(path: Path, depth_bytes: int, bits_per_sample: int | None) -> int:
    """Bits per pixel: the MAR header's depth, else the TIFF's; the two must not disagree."""
    if depth_bytes in (2, 4):
        bits = depth_bytes * 8
        if bits_per_sample is not None and bits_per_sample != bits:
            raise CorruptFrameError(
                f"{path}: MAR header says {depth_bytes} bytes per pixel "
                f"but the TIFF says {bits_per_sample} bits"
            )
        return bits
    if bits_per_sample in (16, 32):
        return bits_per_sample
    raise MissingMetadataError(
        f"{path}: no usable bit depth: MAR header depth is {depth_bytes} bytes and "
        f"TIFF BitsPerSample is {bits_per_sample}"
    )


def _native(raw: dict[str, Any], bit_depth: int) -> dict[str, Any]:
    """The legacy JSON fields under their legacy names and units (fork §10 Rayonix table)."""
    comment = raw["file_comment"]
    detector = _quoted(comment, "detector") or _DETECTOR_BY_NSLOW.get(raw["nslow"], "Unknown")
    wavelength_a = raw["source_wavelength"] / 1e5
    native: dict[str, Any] = {
        "filename": raw["filename"],
        "filepath": raw["filepath"],
        "comment": comment,
        "detector": detector,
        "beamline": _quoted(comment, "LS_CAT_Beamline") or "21-ID",
        "detector_distance": raw["xtal_to_detector"] / 1e6,
        "rotationRange": raw["rotation_range"] / 1000,
        "startPhi": raw["start_phi"] / 1000,
        "wavelength": wavelength_a,
        "beam_center_x": raw["beam_x"] / 1000,
        "beam_center_y": raw["beam_y"] / 1000,
        "x_pixel_size": raw["pixelsize_x"] / 1e9,
        "y_pixel_size": raw["pixelsize_y"] / 1e9,
        "integrationTime": raw["integration_time"] / 1000,
        "exposureTime": raw["exposure_time"] / 1000,
        "readoutTime": raw["readout_time"] / 1000,
        "meanValue": raw["mean"] / 1000,
        "rmsValue": raw["rms"] / 1000,
        "nSaturated": raw["n_saturated"],
        "saturation": raw["saturation_level"],
        "minValue": raw["min"],
        "maxValue": raw["max"],
        "x_pixels_in_detector": raw["nfast"],
        "y_pixels_in_detector": raw["nslow"],
        "image_depth": bit_depth // 8,
    }
    if wavelength_a > 0:
        native["photon_energy"] = HC_EV_ANGSTROM / wavelength_a
    return native


def _quoted(comment: str, key: str) -> str | None:
    """The value of ``key='…'`` in the MAR file comment, as LS-CAT writes it."""
    match = re.search(rf"\b{re.escape(key)}='([^']*)'", comment)
    return match.group(1) if match else None
