"""SMV / ADSC (``.img``): a ``{ KEY=VALUE; }`` text header of HEADER_BYTES, then raw pixels.

The header is parsed here (ten lines) rather than through fabio's d*TREK reader, because that
reader cannot give the header without decoding the pixels. Beam centre: ``BEAM_CENTER_X`` /
``BEAM_CENTER_Y`` (mm) divided by ``PIXEL_SIZE`` (mm), taken as x = fast, y = slow as written;
note that dxtbx swaps the two for ADSC Q-series CCDs, which this reader does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from imageserver.errors import CorruptFrameError, FrameRangeError
from imageserver.formats.base import Frame, FrameMeta
from imageserver.formats.compressed import read_bytes, read_head

SMV_MAGIC = b"{\nHEADER_BYTES="
_TYPES = {
    "unsigned_short": "u2",
    "unsigned short int": "u2",
    "unsigned_int": "u4",
    "unsigned_long": "u4",
    "unsigned long int": "u4",
}
_BYTE_ORDERS = {"little_endian": "<", "big_endian": ">"}


class SmvReader:
    """ADSC-style SMV frames of unsigned 16- or 32-bit pixels."""

    format_name: ClassVar[str] = "smv"
    extensions: ClassVar[tuple[str, ...]] = (".img", ".smv")

    @classmethod
    def sniff(cls, head: bytes, suffix: str) -> bool:
        return head.startswith(SMV_MAGIC)

    def read_meta(self, path: Path) -> FrameMeta:
        head = read_head(path).head
        size = _header_bytes(head, path)
        if size > len(head):
            head = read_head(path, size).head
        return _smv_meta(path, _header_fields(head[:size]))

    def frame_files(self, path: Path, number: int) -> tuple[str, ...]:
        return ()  # one file holds everything

    def read_frame(self, path: Path, number: int) -> Frame:
        if number != 1:
            raise FrameRangeError(f"{path}: frame {number} is outside 1..1 (a single-frame file)")
        content = read_bytes(path)
        size = _header_bytes(content, path)
        fields = _header_fields(content[:size])
        meta = _smv_meta(path, fields)
        stored = np.dtype(_BYTE_ORDERS[fields.get("BYTE_ORDER", "little_endian")] + _dtype(fields))
        count = meta.width_px * meta.height_px
        have = (len(content) - size) // stored.itemsize
        if have < count:
            raise CorruptFrameError(f"{path}: truncated SMV: {have} of {count} pixels present")
        pixels = np.frombuffer(content, dtype=stored, count=count, offset=size)
        native = pixels.astype(stored.newbyteorder("=")).reshape(meta.height_px, meta.width_px)
        return Frame(pixels=native, mask=None, meta=meta, number=number, path=path)


def _header_bytes(head: bytes, path: Path) -> int:
    value = head[len(SMV_MAGIC) :].split(b";", 1)[0].strip()
    if not value.isdigit():
        raise CorruptFrameError(f"{path}: SMV HEADER_BYTES is not a number ({value[:20]!r})")
    return int(value)


def _header_fields(header: bytes) -> dict[str, str]:
    """KEY=VALUE; lines up to the closing brace."""
    text = header.split(b"}", 1)[0].decode("latin-1")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            fields[key.strip()] = value.strip().rstrip(";").strip()
    return fields


def _dtype(fields: dict[str, str]) -> str:
    name = fields.get("Data_type") or fields.get("TYPE") or "unsigned_short"
    return _TYPES.get(name, "")


def _number(fields: dict[str, str], key: str) -> float | None:
    try:
        return float(fields[key])
    except (KeyError, ValueError):
        return None


def _smv_meta(path: Path, fields: dict[str, str]) -> FrameMeta:
    code = _dtype(fields)
    if not code:
        raise CorruptFrameError(f"{path}: SMV pixel type {fields.get('TYPE')!r} is not supported")
    if fields.get("BYTE_ORDER", "little_endian") not in _BYTE_ORDERS:
        raise CorruptFrameError(f"{path}: SMV BYTE_ORDER {fields['BYTE_ORDER']!r} is unknown")
    width, height = _number(fields, "SIZE1"), _number(fields, "SIZE2")
    if not width or not height:
        raise CorruptFrameError(f"{path}: SMV header lacks SIZE1/SIZE2")
    pixel_mm = _number(fields, "PIXEL_SIZE")
    beam_x_mm, beam_y_mm = _number(fields, "BEAM_CENTER_X"), _number(fields, "BEAM_CENTER_Y")
    beam_x_px = beam_y_px = None
    if pixel_mm and beam_x_mm is not None and beam_y_mm is not None:
        beam_x_px, beam_y_px = beam_x_mm / pixel_mm, beam_y_mm / pixel_mm
    distance_mm = _number(fields, "DISTANCE")
    saturation = _number(fields, "SATURATED_VALUE")
    return FrameMeta(
        format_name=SmvReader.format_name,
        width_px=int(width),
        height_px=int(height),
        bit_depth=8 * int(code[1]),
        beam_center_x_px=beam_x_px,
        beam_center_y_px=beam_y_px,
        distance_m=distance_mm / 1000 if distance_mm else None,
        wavelength_a=_number(fields, "WAVELENGTH"),
        pixel_size_x_m=pixel_mm / 1000 if pixel_mm else None,
        pixel_size_y_m=pixel_mm / 1000 if pixel_mm else None,
        saturation_value=int(saturation) if saturation else None,
        native=dict(fields),
    )
