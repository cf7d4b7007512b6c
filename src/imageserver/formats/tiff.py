"""TIFF structure (both byte orders, uncompressed strips) and the generic TIFF reader.

The generic reader serves Eiger "monitor" images: a plain TIFF has a size and a bit depth but
no geometry, so the beam centre defaults to the centre of the pixel grid, ((width − 1)/2,
(height − 1)/2), and ``native["beam_center_is_default"]`` is true to say so.

MAR CCD files are TIFFs too. The rule that tells them apart (`is_marccd_head`) lives here,
next to the TIFF parsing it needs, so the generic reader refuses exactly what ``marccd.py``
claims without an import cycle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError, MissingMetadataError
from imageserver.formats.base import (
    MAX_SIDE_PX,
    Frame,
    FrameMeta,
    PixelArray,
    check_frame_size,
    frame_range_error,
)
from imageserver.formats.compressed import HEAD_BYTES, read_bytes, read_head

TIFF_BYTE_ORDERS = {b"II*\x00": "<", b"MM\x00*": ">"}

MARCCD_NFAST_OFFSET = 1104
MARCCD_NSLOW_OFFSET = 1108
MARCCD_SUFFIX = ".mccd"

_IMAGE_WIDTH, _IMAGE_LENGTH, _BITS_PER_SAMPLE, _COMPRESSION = 256, 257, 258, 259
_STRIP_OFFSETS, _SAMPLES_PER_PIXEL, _STRIP_BYTE_COUNTS = 273, 277, 279
_TILE_OFFSETS, _SAMPLE_FORMAT = 324, 339
_INTEGER_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i"}
"""TIFF field type -> struct code; the tags read here are all integers."""
_TAGS_READ = frozenset(
    {
        _IMAGE_WIDTH,
        _IMAGE_LENGTH,
        _BITS_PER_SAMPLE,
        _COMPRESSION,
        _STRIP_OFFSETS,
        _SAMPLES_PER_PIXEL,
        _STRIP_BYTE_COUNTS,
        _TILE_OFFSETS,
        _SAMPLE_FORMAT,
    }
)
_MAX_VALUES = MAX_SIDE_PX
"""No tag read here has more values than an image has rows (one strip per row at most)."""


class _TagError(ValueError):
    """A directory entry that cannot be right (too many values)."""


@dataclass(frozen=True)
class TiffLayout:
    """What the first image directory says about the pixels and where they are."""

    byte_order: str
    width_px: int
    height_px: int
    bits_per_sample: int | None
    sample_format: int
    compression: int
    samples_per_pixel: int
    strip_offsets: tuple[int, ...]
    strip_byte_counts: tuple[int, ...]


def tiff_byte_order(head: bytes) -> str | None:
    """The struct byte-order prefix ("<" or ">") of a classic TIFF, else None."""
    return TIFF_BYTE_ORDERS.get(head[:4])


def parse_tiff_layout(data: bytes, source: Path | str) -> TiffLayout:
    """The first IFD of ``data``; CorruptFrameError naming ``source`` if it is not all there."""
    order = tiff_byte_order(data)
    if order is None:
        raise CorruptFrameError(f"{source}: not a TIFF file")
    try:
        tags = _integer_tags(data, order)
    except struct.error as exc:
        raise CorruptFrameError(
            f"{source}: TIFF directory lies outside the {len(data)} bytes read"
        ) from exc
    except _TagError as exc:
        raise CorruptFrameError(f"{source}: TIFF {exc}") from exc
    if _IMAGE_WIDTH not in tags or _IMAGE_LENGTH not in tags:
        raise CorruptFrameError(f"{source}: TIFF has no ImageWidth/ImageLength")
    if _STRIP_OFFSETS not in tags or _STRIP_BYTE_COUNTS not in tags:
        kind = "tiled TIFF is not supported" if _TILE_OFFSETS in tags else "TIFF has no strips"
        raise CorruptFrameError(f"{source}: {kind}")
    if len(tags[_STRIP_OFFSETS]) != len(tags[_STRIP_BYTE_COUNTS]):
        raise CorruptFrameError(f"{source}: TIFF StripOffsets and StripByteCounts disagree")
    bits = tags.get(_BITS_PER_SAMPLE)
    return TiffLayout(
        byte_order=order,
        width_px=tags[_IMAGE_WIDTH][0],
        height_px=tags[_IMAGE_LENGTH][0],
        bits_per_sample=bits[0] if bits else None,
        sample_format=tags.get(_SAMPLE_FORMAT, (1,))[0],
        compression=tags.get(_COMPRESSION, (1,))[0],
        samples_per_pixel=tags.get(_SAMPLES_PER_PIXEL, (1,))[0],
        strip_offsets=tags[_STRIP_OFFSETS],
        strip_byte_counts=tags[_STRIP_BYTE_COUNTS],
    )


def _integer_tags(data: bytes, order: str) -> dict[int, tuple[int, ...]]:
    """The integer entries of the first IFD that are read here; struct.error when one runs
    past ``data``. Other tags are skipped unread: a crafted count could ask for millions."""
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    tags: dict[int, tuple[int, ...]] = {}
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack_from(order + "HHI", data, entry)
        code = _INTEGER_TYPES.get(kind)
        if code is None or n == 0 or tag not in _TAGS_READ:
            continue
        if n > _MAX_VALUES:
            raise _TagError(f"tag {tag} claims {n} values")
        size = struct.calcsize(code) * n
        where = entry + 8 if size <= 4 else struct.unpack_from(order + "I", data, entry + 8)[0]
        tags[tag] = struct.unpack_from(f"{order}{n}{code}", data, where)
    return tags


def layout_of(path: Path, head: bytes, limits: LimitSettings = DEFAULT_LIMITS) -> TiffLayout:
    """The layout from the head when the IFD fits in it, else from the whole file."""
    try:
        return parse_tiff_layout(head, path)
    except CorruptFrameError:
        if len(head) < HEAD_BYTES:  # the head was the whole file
            raise
    return parse_tiff_layout(read_bytes(path, limits=limits), path)


def is_marccd_head(head: bytes, suffix: str) -> bool:
    """A MAR CCD TIFF: nfast/nslow at 1104/1108 (file byte order) equal the TIFF size.

    As dxtbx's FormatTIFFRayonix: the MAR header must agree with the TIFF. When the IFD is
    not inside the head the check cannot be made; a plausible MAR size and a ``.mccd``
    extension then decide.
    """
    order = tiff_byte_order(head)
    if order is None or len(head) < MARCCD_NSLOW_OFFSET + 4:
        return False
    nfast, nslow = struct.unpack_from(order + "II", head, MARCCD_NFAST_OFFSET)
    try:
        layout = parse_tiff_layout(head, "<head>")
    except CorruptFrameError:
        return suffix == MARCCD_SUFFIX and 0 < nfast <= 65535 and 0 < nslow <= 65535
    return nfast > 0 and (nfast, nslow) == (layout.width_px, layout.height_px)


def read_tiff_pixels(content: bytes, layout: TiffLayout, bit_depth: int, path: Path) -> PixelArray:
    """Uncompressed unsigned strips as native uint16/uint32 of shape (height, width)."""
    if layout.compression != 1:
        raise CorruptFrameError(
            f"{path}: TIFF compression {layout.compression} is not supported (uncompressed only)"
        )
    if layout.samples_per_pixel != 1 or layout.sample_format != 1:
        raise CorruptFrameError(
            f"{path}: TIFF pixels are not single unsigned integers "
            f"(SamplesPerPixel {layout.samples_per_pixel}, SampleFormat {layout.sample_format})"
        )
    itemsize = bit_depth // 8
    expected = layout.width_px * layout.height_px * itemsize
    view = memoryview(content)
    strips = [
        view[offset : offset + count]
        for offset, count in zip(layout.strip_offsets, layout.strip_byte_counts, strict=True)
    ]
    data = strips[0] if len(strips) == 1 else b"".join(strips)
    if len(data) < expected:
        raise CorruptFrameError(
            f"{path}: truncated TIFF: {len(data)} of {expected} bytes of pixel data"
        )
    stored = np.frombuffer(
        data, dtype=f"{layout.byte_order}u{itemsize}", count=expected // itemsize
    )
    shape = (layout.height_px, layout.width_px)
    if itemsize == 2:
        return stored.astype(np.uint16).reshape(shape)
    return stored.astype(np.uint32).reshape(shape)


class TiffReader:
    """Plain TIFF (Eiger monitor images): size and depth only, beam centre defaulted."""

    format_name: ClassVar[str] = "tiff"
    extensions: ClassVar[tuple[str, ...]] = (".tif", ".tiff")

    @classmethod
    def sniff(cls, head: bytes, suffix: str) -> bool:
        return tiff_byte_order(head) is not None and not is_marccd_head(head, suffix)

    def read_meta(self, path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> FrameMeta:
        layout = layout_of(path, read_head(path, limits=limits).head, limits)
        return _tiff_meta(path, layout, limits)

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
        meta = _tiff_meta(path, layout, limits)
        pixels = read_tiff_pixels(content, layout, meta.bit_depth, path)
        return Frame(pixels=pixels, mask=None, meta=meta, number=number, path=path)


def _tiff_meta(path: Path, layout: TiffLayout, limits: LimitSettings) -> FrameMeta:
    check_frame_size(path, layout.width_px, layout.height_px, limits)
    bits = layout.bits_per_sample
    if bits is None:
        raise MissingMetadataError(f"{path}: TIFF has no BitsPerSample; the bit depth is unknown")
    if bits not in (16, 32):
        raise CorruptFrameError(f"{path}: {bits}-bit TIFF pixels are not supported (16 or 32)")
    return FrameMeta(
        format_name=TiffReader.format_name,
        width_px=layout.width_px,
        height_px=layout.height_px,
        bit_depth=bits,
        beam_center_x_px=(layout.width_px - 1) / 2,
        beam_center_y_px=(layout.height_px - 1) / 2,
        native={"beam_center_is_default": True},
    )
