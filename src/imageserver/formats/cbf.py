"""CBF (Pilatus miniCBF and full imgCIF), byte_offset int32, decoded with fabio from bytes.

The content is unwrapped once by ``compressed.py`` and handed to fabio as a BytesIO, so a
``.cbf.bz2`` frame costs one bzip2 pass plus ~10 ms of decoding. Before fabio sees the bytes,
the MIME header of the binary section is checked here: fabio would loop forever on a file cut
before the binary data starts, and decodes a short binary section without complaint. fabio
parses the CIF text; the pixels are decoded here with fabio's byte_offset decoder, to the size
this header check found within ``limits`` (fabio would allocate whatever size its own parse of
the header gives).

Pixels: int32 becomes uint32 with every negative value (−1 module gaps, −2 bad pixels) set
to 0xFFFFFFFF, the masked marker of ``Frame``; ``mask`` is None because the marker carries
it. The Content-MD5 is not verified (fabio only logs a mismatch; gz/bz2 wrappers carry their
own CRC).

Metadata comes from the Pilatus ``header_contents`` lines; a full imgCIF file without them
falls back to the imgCIF categories fabio exposes (wavelength, distance, pixel size,
overload). The beam centre is taken as written (``Beam_xy``, pixels); without it it stays
None. ``native`` uses the legacy fork's key names (legacy-fork-2025.md §10), with real
values instead of the fork's constants, and leaves out what the file does not say.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import fabio.cbfimage
import numpy as np
import numpy.typing as npt
from fabio.compression import decByteOffset

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError
from imageserver.formats.base import (
    HC_EV_ANGSTROM,
    Frame,
    FrameMeta,
    check_frame_size,
    frame_range_error,
)
from imageserver.formats.compressed import read_bytes, read_head
from imageserver.formats.imgcif_axes import detector_panel

CBF_MAGIC = b"###CBF"
MASKED_U32 = 0xFFFFFFFF
_META_HEAD_BYTES = 1 << 16
"""A full imgCIF text header is ~8 kB; 64 kB covers it with room to spare."""
_BINARY_SECTION = b"--CIF-BINARY-FORMAT-SECTION--"
_BINARY_START = b"\x0c\x1a\x04\xd5"
_INT32 = "signed 32-bit integer"
_SIZE_KEYS = (
    "X-Binary-Size",
    "X-Binary-Size-Fastest-Dimension",
    "X-Binary-Size-Second-Dimension",
)
_COUNT = re.compile(r"[0-9]{1,18}")
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_PILATUS_LINES: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.MULTILINE)
    for name, pattern in {
        "detector": r"^#\s*Detector:\s*(.*?)\s*$",
        "pixel_size": rf"^#\s*Pixel_size\s+{_NUMBER}\s*m\s*x\s*{_NUMBER}\s*m",
        "distance": rf"^#\s*Detector_distance\s+{_NUMBER}\s*m",
        "wavelength": rf"^#\s*Wavelength\s+{_NUMBER}\s*A",
        "beam_xy": rf"^#\s*Beam_xy\s*\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)\s*pixels",
        "start_angle": rf"^#\s*Start_angle\s+{_NUMBER}",
        "angle_increment": rf"^#\s*Angle_increment\s+{_NUMBER}",
        "exposure_time": rf"^#\s*Exposure_time\s+{_NUMBER}",
        "count_cutoff": r"^#\s*Count_cutoff\s+(\d+)",
        "sensor": rf"^#\s*(\S+)\s+sensor,\s*thickness\s*{_NUMBER}\s*m",
    }.items()
}
_IMGCIF_ITEMS = {
    "wavelength": "_diffrn_radiation_wavelength.wavelength",
    "distance_mm": "_diffrn_measurement.sample_detector_distance",
    "pixel_size": "_array_element_size.size",
    "overload": "_array_intensities.overload",
}


class CbfReader:
    """CBF files with a byte_offset int32 binary section, plain or gz/bz2/xz-wrapped."""

    format_name: ClassVar[str] = "cbf"
    extensions: ClassVar[tuple[str, ...]] = (".cbf",)

    @classmethod
    def sniff(cls, head: bytes, suffix: str) -> bool:
        return head.startswith(CBF_MAGIC)

    def read_meta(self, path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> FrameMeta:
        text = read_head(path, _META_HEAD_BYTES, limits=limits).head
        starts_at = text.find(_BINARY_SECTION)
        if starts_at < 0 or text.find(_BINARY_START, starts_at) < 0:
            text = read_bytes(path, limits=limits)  # a longer text header, or a broken file
        section = _binary_section(text, path, limits)
        image = _fabio_header(text[: section.data_offset], path)
        return _cbf_meta(path, image.header, section)

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
        section = _binary_section(content, path, limits)
        _check_binary(content, section, path)
        image = _fabio_header(content[: section.data_offset], path)
        pixels = _unsigned_with_marker(_decode_pixels(content, section, path))
        meta = _cbf_meta(path, image.header, section)
        return Frame(pixels=pixels, mask=None, meta=meta, number=number, path=path)


@dataclass(frozen=True)
class _BinarySection:
    """The MIME fields of the binary section and the offset where its data starts."""

    fields: dict[str, str]
    data_offset: int

    @property
    def width_px(self) -> int:
        return int(self.fields["X-Binary-Size-Fastest-Dimension"])

    @property
    def height_px(self) -> int:
        return int(self.fields["X-Binary-Size-Second-Dimension"])


def _binary_section(content: bytes, path: Path, limits: LimitSettings) -> _BinarySection:
    """The binary section's MIME header, checked enough that fabio cannot hang on it and the
    frame size within ``limits``."""
    section = content.find(_BINARY_SECTION)
    if section < 0:
        raise CorruptFrameError(f"{path}: CBF has no binary section (truncated or not an image)")
    start = content.find(_BINARY_START, section)
    if start < 0:
        raise CorruptFrameError(f"{path}: truncated CBF: the binary section header is cut off")
    fields: dict[str, str] = {}
    for line in content[section:start].decode("latin-1").splitlines()[1:]:
        key, colon, value = line.partition(":")
        if colon:
            fields[key.strip()] = value.strip().strip('"')
        elif "conversions=" in line:
            fields["conversions"] = line.split("=", 1)[1].strip().strip('"')
    for key in _SIZE_KEYS:
        if _COUNT.fullmatch(fields.get(key, "")) is None:
            raise CorruptFrameError(f"{path}: CBF binary header lacks a valid {key}")
    found = _BinarySection(fields, start + len(_BINARY_START))
    check_frame_size(path, found.width_px, found.height_px, limits)
    return found


def _check_binary(content: bytes, section: _BinarySection, path: Path) -> None:
    """Reject what fabio would decode wrongly: short data, other encodings or types."""
    header = section.fields
    if header.get("conversions") != "x-CBF_BYTE_OFFSET":
        raise CorruptFrameError(
            f"{path}: CBF compression {header.get('conversions')!r} is not supported "
            "(byte_offset only)"
        )
    if header.get("X-Binary-Element-Type", _INT32) != _INT32:
        raise CorruptFrameError(
            f"{path}: CBF element type {header['X-Binary-Element-Type']!r} is not supported "
            f"({_INT32} only)"
        )
    order = header.get("X-Binary-Element-Byte-Order", "LITTLE_ENDIAN")
    if order != "LITTLE_ENDIAN":
        raise CorruptFrameError(
            f"{path}: CBF byte order {order!r} is not supported (LITTLE_ENDIAN only)"
        )
    have = len(content) - section.data_offset
    need = int(header["X-Binary-Size"])
    if have < need:
        raise CorruptFrameError(f"{path}: truncated CBF: {have} of {need} bytes of binary data")


def _fabio_header(text: bytes, path: Path) -> fabio.cbfimage.CbfImage:
    """fabio's parse of the CIF text, given up to the binary data (which it would copy)."""
    image = fabio.cbfimage.CbfImage()
    try:
        image.read(io.BytesIO(text), check_MD5=False, only_raw=True)
    except (OSError, ValueError, KeyError, IndexError, AssertionError, RuntimeError) as exc:
        raise CorruptFrameError(f"{path}: fabio cannot decode the CBF ({exc})") from exc
    return image


def _decode_pixels(content: bytes, section: _BinarySection, path: Path) -> npt.NDArray[np.int32]:
    """The byte_offset data as exactly the checked number of int32 pixels, else corrupt."""
    start = section.data_offset
    stream = content[start : start + int(section.fields["X-Binary-Size"])]
    count = section.width_px * section.height_px
    values = np.asarray(decByteOffset(stream, size=count, dtype="int32"), dtype=np.int32)
    if values.size != count:
        raise CorruptFrameError(f"{path}: CBF binary data holds {values.size} of {count} pixels")
    return values.reshape(section.height_px, section.width_px)


def _unsigned_with_marker(signed: npt.NDArray[np.int32]) -> npt.NDArray[np.uint32]:
    """The same buffer as uint32, every negative value (gap, bad pixel) set to the marker."""
    pixels = np.ascontiguousarray(signed, dtype=np.int32).view(np.uint32)
    np.copyto(pixels, np.uint32(MASKED_U32), where=pixels > np.iinfo(np.int32).max)
    return pixels


def _cbf_meta(path: Path, cif: dict[str, Any], section: _BinarySection) -> FrameMeta:
    pilatus = _pilatus_values(str(cif.get("_array_data.header_contents", "")))
    imgcif = _imgcif_values(cif)
    pixel = pilatus.get("pixel_size") or imgcif.get("pixel_size") or (None, None)
    distance_m = pilatus.get("distance", (None,))[0]
    if distance_m is None and "distance_mm" in imgcif:
        distance_m = imgcif["distance_mm"][0] / 1000
    wavelength_a = (pilatus.get("wavelength") or imgcif.get("wavelength") or (None,))[0]
    beam = pilatus.get("beam_xy", (None, None))
    cutoff = (pilatus.get("count_cutoff") or imgcif.get("overload") or (None,))[0]
    sensor = pilatus.get("sensor", (None, None))
    native: dict[str, Any] = {
        "filename": path.name,
        "filepath": str(path),
        "detector": pilatus.get("detector"),
        "detector_distance": distance_m,
        "rotationRange": pilatus.get("angle_increment", (None,))[0],
        "startPhi": pilatus.get("start_angle", (None,))[0],
        "wavelength": wavelength_a,
        "photon_energy": HC_EV_ANGSTROM / wavelength_a if wavelength_a else None,
        "beam_center_x": beam[0],
        "beam_center_y": beam[1],
        "x_pixel_size": pixel[0],
        "y_pixel_size": pixel[1],
        "integrationTime": pilatus.get("exposure_time", (None,))[0],
        "image_depth": 4,
        "sensor_material": {"Silicon": "Si"}.get(sensor[0], sensor[0]),
        "sensor_thickness": sensor[1],
    }
    return FrameMeta(
        format_name=CbfReader.format_name,
        width_px=section.width_px,
        height_px=section.height_px,
        bit_depth=32,
        beam_center_x_px=beam[0],
        beam_center_y_px=beam[1],
        distance_m=distance_m,
        wavelength_a=wavelength_a,
        pixel_size_x_m=pixel[0],
        pixel_size_y_m=pixel[1],
        saturation_value=int(cutoff) if cutoff is not None else None,
        native={key: value for key, value in native.items() if value is not None},
        panel=detector_panel(_loop_rows(cif)),
    )


def _pilatus_values(text: str) -> dict[str, Any]:
    """Numbers (as tuples of floats) and the detector name from the Pilatus header lines."""
    values: dict[str, Any] = {}
    for name, pattern in _PILATUS_LINES.items():
        match = pattern.search(text)
        if match is None:
            continue
        if name == "detector":
            values[name] = match.group(1)
        elif name == "sensor":  # material, thickness (m): the resolution needs its parallax
            values[name] = (match.group(1), float(match.group(2)))
        else:
            values[name] = tuple(float(group) for group in match.groups())
    return values


def _imgcif_values(cif: dict[str, Any]) -> dict[str, tuple[float, ...]]:
    """First-row numbers of a few imgCIF loop items, as fabio's CIF parser stores them."""
    items: dict[str, list[bytes]] = {
        key: [value.encode("latin-1")] for key, value in cif.items() if isinstance(value, str)
    }
    for loop in cif.get("loop_", ()):
        for row in loop[1]:
            for key, value in row.items():
                items.setdefault(key.decode("latin-1"), []).append(value)
    values: dict[str, tuple[float, ...]] = {}
    for name, item in _IMGCIF_ITEMS.items():
        numbers = tuple(number for number in map(_cif_number, items.get(item, ())) if number)
        if numbers:
            values[name] = numbers
    if "pixel_size" in values and len(values["pixel_size"]) == 1:
        values["pixel_size"] *= 2
    return values


def _loop_rows(cif: dict[str, Any]) -> list[dict[str, str]]:
    """Every row of every loop of fabio's CIF parse, names and values as text."""
    return [
        {_text(key): _text(value) for key, value in row.items()}
        for loop in cif.get("loop_", ())
        for row in loop[1]
    ]


def _text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _cif_number(value: bytes) -> float | None:
    """A CIF numeric value ("0.97625", "291.47(5)"); None for "." / "?" or text."""
    match = re.match(_NUMBER, value.decode("latin-1").strip())
    return float(match.group(1)) if match else None
