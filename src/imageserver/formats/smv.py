"""SMV / ADSC (``.img``): a ``{ KEY=VALUE; }`` text header of HEADER_BYTES, then raw pixels.

The header is parsed here (ten lines) rather than through fabio's d*TREK reader, because that
reader cannot give the header without decoding the pixels. Beam centre: ``BEAM_CENTER_X`` /
``BEAM_CENTER_Y`` (mm) divided by ``PIXEL_SIZE`` (mm), taken as x = fast, y = slow as written;
note that dxtbx swaps the two for ADSC Q-series CCDs, which this reader does not.

Pixels are uint32 whatever the stored depth: ADSC writes an overload as 65535, which must stay
a value (saturated, red) instead of the uint16 masked marker of the Frame contract, as in the
MAR CCD reader. Without SATURATED_VALUE a 16-bit file saturates at 65535.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError
from imageserver.formats.base import Frame, FrameMeta, check_frame_size, frame_range_error
from imageserver.formats.compressed import read_bytes, read_head

SMV_MAGIC = b"{\nHEADER_BYTES="
MAX_HEADER_BYTES = 1 << 20
"""ADSC headers are 512 bytes, d*TREK ones a few kB; a larger claim is a damaged header."""
OVERLOAD_16BIT = 65535
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

    def read_meta(self, path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> FrameMeta:
        _, fields = _read_header(path, limits)
        return _smv_meta(path, fields, limits)

    def frame_files(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> tuple[str, ...]:
        return ()  # one file holds everything

    def read_frame(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> Frame:
        if number != 1:
            raise frame_range_error(path, number, 1, 1)
        size, fields = _read_header(path, limits)
        meta = _smv_meta(path, fields, limits)  # the frame size is checked before any read
        content = read_bytes(path, limits=limits)
        stored = np.dtype(_BYTE_ORDERS[fields.get("BYTE_ORDER", "little_endian")] + _dtype(fields))
        count = meta.width_px * meta.height_px
        have = max(0, len(content) - size) // stored.itemsize
        if have < count:
            raise CorruptFrameError(f"{path}: truncated SMV: {have} of {count} pixels present")
        pixels = np.frombuffer(content, dtype=stored, count=count, offset=size)
        widened = pixels.astype(np.uint32).reshape(meta.height_px, meta.width_px)
        return Frame(pixels=widened, mask=None, meta=meta, number=number, path=path)


def _read_header(path: Path, limits: LimitSettings) -> tuple[int, dict[str, str]]:
    """HEADER_BYTES and the header's fields, reading no more of the file than the header."""
    head = read_head(path, limits=limits).head
    size = _header_bytes(head, path)
    if size > len(head):
        head = read_head(path, size, limits=limits).head
    return size, _header_fields(head[:size])


def _header_bytes(head: bytes, path: Path) -> int:
    value = head[len(SMV_MAGIC) :].split(b";", 1)[0].strip()
    if not value.isdigit():
        raise CorruptFrameError(f"{path}: SMV HEADER_BYTES is not a number ({value[:20]!r})")
    size = int(value)
    if size > MAX_HEADER_BYTES:
        raise CorruptFrameError(
            f"{path}: SMV HEADER_BYTES {size} is not plausible (at most {MAX_HEADER_BYTES})"
        )
    return size


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
    """A finite number, or None when the field is absent or not one."""
    try:
        value = float(fields[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _size(fields: dict[str, str], key: str, path: Path) -> int:
    """SIZE1 or SIZE2 as a whole number (its sign and bounds are checked with the other)."""
    value = _number(fields, key)
    if value is None or not value.is_integer():
        raise CorruptFrameError(
            f"{path}: SMV {key} is not a whole number ({fields.get(key, 'missing')!r})"
        )
    return int(value)


def _smv_meta(path: Path, fields: dict[str, str], limits: LimitSettings) -> FrameMeta:
    code = _dtype(fields)
    if not code:
        raise CorruptFrameError(f"{path}: SMV pixel type {fields.get('TYPE')!r} is not supported")
    if fields.get("BYTE_ORDER", "little_endian") not in _BYTE_ORDERS:
        raise CorruptFrameError(f"{path}: SMV BYTE_ORDER {fields['BYTE_ORDER']!r} is unknown")
    width, height = _size(fields, "SIZE1", path), _size(fields, "SIZE2", path)
    check_frame_size(path, width, height, limits)
    bit_depth = 8 * int(code[1])
    pixel_mm = _number(fields, "PIXEL_SIZE")
    beam_x_mm, beam_y_mm = _number(fields, "BEAM_CENTER_X"), _number(fields, "BEAM_CENTER_Y")
    beam_x_px = beam_y_px = None
    if pixel_mm and beam_x_mm is not None and beam_y_mm is not None:
        beam_x_px, beam_y_px = beam_x_mm / pixel_mm, beam_y_mm / pixel_mm
    distance_mm = _number(fields, "DISTANCE")
    saturation = _number(fields, "SATURATED_VALUE")
    if not saturation and bit_depth == 16:
        saturation = OVERLOAD_16BIT
    return FrameMeta(
        format_name=SmvReader.format_name,
        width_px=width,
        height_px=height,
        bit_depth=bit_depth,
        beam_center_x_px=beam_x_px,
        beam_center_y_px=beam_y_px,
        distance_m=distance_mm / 1000 if distance_mm else None,
        wavelength_a=_number(fields, "WAVELENGTH"),
        pixel_size_x_m=pixel_mm / 1000 if pixel_mm else None,
        pixel_size_y_m=pixel_mm / 1000 if pixel_mm else None,
        saturation_value=int(saturation) if saturation else None,
        native=dict(fields),
    )
