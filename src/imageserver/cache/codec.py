"""Binary cache entries: a fixed header, a JSON header, then bitshuffle-LZ4 compressed arrays.

Shared entries are written by other processes (other users of the ESAF), so decoding trusts
nothing and never unpickles: every header field is type- and range-checked, array sizes must
add up to the entry's length, and the block lengths inside each compressed array are walked
before bitshuffle sees them (it trusts them and would read past the buffer). A bad entry is
one `CacheUnavailableError`, which callers treat as a miss.

Layout: ``b"ISC1"`` · u32 kind length · kind · u32 JSON length · JSON · array streams, in the
order the JSON's ``arrays`` list gives. Compression makes a 1024-wide Eiger view about 8×
smaller (5.5 MB → 0.7 MB, 1 ms each way), which is what makes a Redis round trip cheap.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import bitshuffle
import numpy as np

from imageserver.errors import CacheUnavailableError
from imageserver.formats import bslz4
from imageserver.formats.base import Frame, FrameMeta
from imageserver.imaging.geometry import View
from imageserver.imaging.reduce import Reduced
from imageserver.imaging.stats import Shell, ViewStats
from imageserver.render import ReducedView

MAGIC = b"ISC1"
_LENGTH = struct.Struct("<I")
BLOCK_BYTES = 8192
"""bitshuffle blocks of 8 KiB (2048 uint32 elements); fixed, so entries never depend on defaults."""
MAX_JSON_BYTES = 1 << 22
MAX_ELEMENTS = 1 << 28
_DTYPES: dict[str, np.dtype] = {name: np.dtype(name) for name in ("<u2", "<u4", "|u1")}

V = TypeVar("V")


class Codec(Protocol[V]):
    """Turns one kind of value into bytes and back; ``decode`` raises CacheUnavailableError."""

    kind: str

    def encode(self, value: V) -> bytes: ...

    def decode(self, data: bytes) -> V: ...


class _InvalidEntryError(ValueError):
    """Internal: why an entry was refused (becomes CacheUnavailableError at the boundary)."""


# -- the container -----------------------------------------------------------------------------


def encode_entry(kind: str, header: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    arrays = [_little_endian(array) for array in arrays]
    streams = [_compress(array) for array in arrays]
    header = {
        **header,
        "arrays": [
            {"dtype": a.dtype.str, "shape": list(a.shape), "nbytes": int(s.nbytes)}
            for a, s in zip(arrays, streams, strict=True)
        ],
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    kind_bytes = kind.encode()
    parts: list[bytes | memoryview] = [MAGIC, _LENGTH.pack(len(kind_bytes)), kind_bytes]
    parts += [_LENGTH.pack(len(text)), text, *(s.data for s in streams)]
    return b"".join(parts)


def decode_entry(data: bytes, kind: str) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The JSON header and the arrays of an entry of ``kind``; CacheUnavailableError if invalid."""
    try:
        return _decode_entry(data, kind)
    except _InvalidEntryError as exc:
        raise CacheUnavailableError(f"invalid {kind} cache entry: {exc}") from None


def _decode_entry(data: bytes, kind: str) -> tuple[dict[str, Any], list[np.ndarray]]:
    if data[:4] != MAGIC:
        raise _InvalidEntryError("wrong magic bytes")
    position = 4
    found_kind, position = _chunk(data, position, 64)
    if found_kind != kind.encode():
        raise _InvalidEntryError(f"it holds a {found_kind[:64]!r} entry")
    text, position = _chunk(data, position, MAX_JSON_BYTES)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _InvalidEntryError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _InvalidEntryError("header is not an object")
    specs = _field(header, "arrays", list)
    arrays = []
    for spec in specs:
        if not isinstance(spec, dict):
            raise _InvalidEntryError("array description is not an object")
        dtype = _DTYPES.get(str(spec.get("dtype")))
        shape, nbytes = spec.get("shape"), spec.get("nbytes")
        if dtype is None:
            raise _InvalidEntryError(f"unsupported dtype {spec.get('dtype')!r}")
        if not isinstance(shape, list) or not _is_shape(shape) or not isinstance(nbytes, int):
            raise _InvalidEntryError("bad array shape")
        if not _is_count(nbytes):
            raise _InvalidEntryError("bad array size")
        end = position + nbytes
        if end > len(data):
            raise _InvalidEntryError("truncated")
        arrays.append(_decompress(memoryview(data)[position:end], tuple(shape), dtype))
        position = end
    if position != len(data):
        raise _InvalidEntryError(f"{len(data) - position} bytes left over")
    return header, arrays


def _chunk(data: bytes, position: int, limit: int) -> tuple[bytes, int]:
    if position + _LENGTH.size > len(data):
        raise _InvalidEntryError("truncated")
    (length,) = _LENGTH.unpack_from(data, position)
    start = position + _LENGTH.size
    if length > limit or start + length > len(data):
        raise _InvalidEntryError("truncated or oversized header")
    return data[start : start + length], start + length


def _compress(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    return np.asarray(bitshuffle.compress_lz4(flat, _block_elements(array.dtype)), dtype=np.uint8)


def _decompress(stream: memoryview, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    try:
        return bslz4.decompress(stream, 0, shape, dtype, _block_elements(dtype))
    except ValueError as exc:
        raise _InvalidEntryError(f"compressed array {exc}") from None


def _block_elements(dtype: np.dtype) -> int:
    return BLOCK_BYTES // dtype.itemsize


def _little_endian(array: np.ndarray) -> np.ndarray:
    """The array in one of the stored dtypes (uint8, little-endian uint16 or uint32)."""
    if array.dtype.kind != "u" or array.dtype.itemsize not in (1, 2, 4):
        raise TypeError(f"cannot store a {array.dtype} array in the cache")
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_shape(value: object) -> bool:
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 2
        and all(_is_count(n) and n > 0 for n in value)
        and math.prod(value) <= MAX_ELEMENTS
    )


def _field(table: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = table.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _InvalidEntryError(f"field {name!r} is missing or of the wrong type")
    return value


def _int(table: dict[str, Any], name: str) -> int:
    return int(_field(table, name, int))


def _float(table: dict[str, Any], name: str) -> float:
    value = float(_field(table, name, (int, float)))
    if not math.isfinite(value):
        raise _InvalidEntryError(f"field {name!r} is not finite")
    return value


# -- reduced views -----------------------------------------------------------------------------


class ViewCodec:
    """A `ReducedView`: values and flags, the planned view, statistics and legacy meta."""

    kind = "view"

    def encode(self, value: ReducedView) -> bytes:
        reduced, stats = value.reduced, value.stats
        # vars(), not asdict(): these dataclasses hold only scalars, and asdict's recursive
        # deep copy of 17 shells cost more than compressing a 256-wide view's pixels.
        header = {
            "view": dict(vars(reduced.view)),
            "saturated_source_px": reduced.saturated_source_px,
            "stats": {**vars(stats), "shells": [vars(shell) for shell in stats.shells]},
            "meta": value.meta,
        }
        return encode_entry(self.kind, header, [reduced.values, reduced.flags])

    def decode(self, data: bytes) -> ReducedView:
        header, arrays = decode_entry(data, self.kind)
        try:
            return _view_from(header, arrays)
        except _InvalidEntryError as exc:
            raise CacheUnavailableError(f"invalid view cache entry: {exc}") from None


def _view_from(header: dict[str, Any], arrays: list[np.ndarray]) -> ReducedView:
    view_table = _field(header, "view", dict)
    view = View(
        width_px=_int(view_table, "width_px"),
        height_px=_int(view_table, "height_px"),
        x0_px=_float(view_table, "x0_px"),
        y0_px=_float(view_table, "y0_px"),
        window_w_px=_float(view_table, "window_w_px"),
        window_h_px=_float(view_table, "window_h_px"),
        zoom=_float(view_table, "zoom"),
        segcol=_float(view_table, "segcol"),
        segrow=_float(view_table, "segrow"),
    )
    if len(arrays) != 2:
        raise _InvalidEntryError("a view has two arrays")
    values, flags = arrays
    shape = (view.height_px, view.width_px)
    if values.shape != shape or flags.shape != shape or values.dtype.itemsize == 1:
        raise _InvalidEntryError(f"arrays do not match the {view.width_px} × {view.height_px} view")
    if flags.dtype != np.uint8 or int(flags.max()) > 2:
        raise _InvalidEntryError("flags out of range")
    stats = _stats_from(_field(header, "stats", dict))
    meta = _field(header, "meta", dict)
    for name in ("frame", "first_frame", "last_frame"):
        _int(meta, name)
    reduced = Reduced(
        values=values.astype(values.dtype.newbyteorder("="), copy=False),
        flags=flags,
        saturated_source_px=_int(header, "saturated_source_px"),
        view=view,
    )
    return ReducedView(reduced=reduced, stats=stats, meta=meta)


def _stats_from(table: dict[str, Any]) -> ViewStats:
    shells = []
    for shell in _field(table, "shells", list):
        if not isinstance(shell, dict):
            raise _InvalidEntryError("shell is not an object")
        shells.append(_shell_from(shell))
    spots = table.get("spots")
    if spots is not None and not _is_count(spots):
        raise _InvalidEntryError("spots is not a count")
    overall = _shell_from(table)
    return ViewStats.from_overall(
        overall,
        saturated=_int(table, "saturated"),
        spots=spots,
        shells=tuple(shells),
    )


def _shell_from(table: dict[str, Any]) -> Shell:
    return Shell(
        n=_int(table, "n"),
        mean=_float(table, "mean"),
        rms=_float(table, "rms"),
        stddev=_float(table, "stddev"),
        min=_int(table, "min"),
        max=_int(table, "max"),
    )


# -- frame sizes -------------------------------------------------------------------------------


class DimsCodec:
    """A file's frame size (width, height) in pixels: what planning a view needs."""

    kind = "dims"

    def encode(self, value: tuple[int, int]) -> bytes:
        return encode_entry(self.kind, {"width_px": value[0], "height_px": value[1]}, [])

    def decode(self, data: bytes) -> tuple[int, int]:
        header, _ = decode_entry(data, self.kind)
        try:
            width, height = _int(header, "width_px"), _int(header, "height_px")
        except _InvalidEntryError as exc:
            raise CacheUnavailableError(f"invalid dims cache entry: {exc}") from None
        if width < 1 or height < 1:
            raise CacheUnavailableError("invalid dims cache entry: empty frame")
        return width, height


class JsonCodec:
    """A JSON document (an analysis result) as the entry's header, with no arrays."""

    kind = "analysis"

    def encode(self, value: bytes) -> bytes:
        return encode_entry(self.kind, {"json": json.loads(value)}, [])

    def decode(self, data: bytes) -> bytes:
        header, _ = decode_entry(data, self.kind)
        document = header.get("json")
        if not isinstance(document, dict):
            raise CacheUnavailableError("invalid analysis cache entry: no JSON object")
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


# -- whole frames (only measured: Redis is slower than the file, see `renderer`) ---------------


class FrameCodec:
    """A decoded `Frame`: pixels, mask and metadata."""

    kind = "frame"

    def encode(self, value: Frame) -> bytes:
        meta = asdict(value.meta)
        meta["native"] = dict(value.meta.native)
        header = {"meta": meta, "number": value.number, "path": str(value.path)}
        arrays = [value.pixels] + ([] if value.mask is None else [value.mask])
        return encode_entry(self.kind, header, arrays)

    def decode(self, data: bytes) -> Frame:
        header, arrays = decode_entry(data, self.kind)
        try:
            meta_table = _field(header, "meta", dict)
            names = {f.name for f in fields(FrameMeta)}
            if set(meta_table) != names:
                raise _InvalidEntryError("frame metadata fields differ")
            meta = FrameMeta(**meta_table)
            if not 1 <= len(arrays) <= 2 or arrays[0].ndim != 2:
                raise _InvalidEntryError("a frame has pixels and an optional mask")
            mask = arrays[1] if len(arrays) == 2 else None
            if mask is not None and (mask.shape != arrays[0].shape or mask.dtype != np.uint8):
                raise _InvalidEntryError("mask does not match the pixels")
            return Frame(
                pixels=arrays[0].astype(arrays[0].dtype.newbyteorder("="), copy=False),
                mask=mask,
                meta=meta,
                number=_int(header, "number"),
                path=Path(_field(header, "path", str)),
            )
        except (_InvalidEntryError, TypeError) as exc:
            raise CacheUnavailableError(f"invalid frame cache entry: {exc}") from None
