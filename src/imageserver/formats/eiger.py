"""Dectris Eiger and NeXus HDF5: a master with linked data files, or one data file alone.

The first read of a master walks its links once (data files, frame numbers, dtype, mask) and
caches that layout; later frames open only their data file, through a shared handle cache.
Whole-frame bitshuffle-LZ4 chunks, as the detector writes them, are read raw under h5py's
global lock and decoded outside it, so threads decode in parallel.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle and LZ4 filters with HDF5)
import numpy as np

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    FrameError,
    FrameRangeError,
    FrameTooLargeError,
    MissingMetadataError,
)
from imageserver.formats import bslz4
from imageserver.formats.base import (
    EncodedFrame,
    Frame,
    FrameMeta,
    MaskArray,
    PixelArray,
    check_frame_size,
    frame_range_error,
)
from imageserver.formats.eiger_mask import read_mask
from imageserver.formats.eiger_tables import (
    SPECIFIC,
    read_header_geometry,
    read_native_fields,
)
from imageserver.formats.handles import FileKey, HandleCache, LayoutCache, file_key

log = logging.getLogger(__name__)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
DATA_GROUP = "/entry/data"
MASK_PATH = f"{SPECIFIC}/pixel_mask"
BITSHUFFLE_FILTER_ID = 32008
_BITSHUFFLE_LZ4 = 2  # the compression flag in the filter's fifth parameter
_CHUNK_HEADER = struct.Struct(">QI")  # uncompressed bytes, block size in bytes

_PIXEL_TYPES: dict[np.dtype, np.dtype] = {
    np.dtype(np.uint16): np.dtype(np.uint16),
    np.dtype(np.uint32): np.dtype(np.uint32),
    np.dtype(np.int16): np.dtype(np.uint16),
    np.dtype(np.int32): np.dtype(np.uint32),
}
"""Stored dtype (native order) -> pixel dtype; signed negatives become the unsigned maximum."""


@dataclass(frozen=True)
class _Segment:
    """Frames ``first``..``last`` stored at indices 0.. of one dataset."""

    path: str
    key: FileKey
    dataset_name: str
    first: int
    last: int
    frame_shape: tuple[int, int]
    stored_dtype: np.dtype
    bslz4_chunks: tuple[int, int, int] | None
    """The chunk shape when bitshuffle-LZ4 is the only filter: read raw, decode ourselves."""


@dataclass(frozen=True)
class _Unavailable:
    """A linked data file that is absent, forbidden or broken; other frames stay readable."""

    path: str
    error: FrameError


@dataclass(frozen=True)
class _Layout:
    """What a frame read needs from the master, parsed once (legacy bug P1).

    ``entries`` follow the link order under /entry/data. A layout with unavailable entries
    is re-walked when a frame needs one of them: the detector may still be writing it.
    """

    key: FileKey
    meta: FrameMeta
    entries: tuple[_Segment | _Unavailable, ...]
    mask: MaskArray | None
    pixel_dtype: np.dtype

    @property
    def segments(self) -> list[_Segment]:
        return [entry for entry in self.entries if isinstance(entry, _Segment)]


SHARED_HANDLES = HandleCache()
SHARED_LAYOUTS: LayoutCache[_Layout] = LayoutCache()


class EigerReader:
    """Reads Eiger masters and data files; safe to share between threads."""

    format_name: ClassVar[str] = "eiger"
    extensions: ClassVar[tuple[str, ...]] = (".h5", ".hdf5", ".nxs")

    def __init__(
        self,
        handles: HandleCache | None = None,
        layouts: LayoutCache[_Layout] | None = None,
    ) -> None:
        self._handles = handles if handles is not None else SHARED_HANDLES
        self._layouts = layouts if layouts is not None else SHARED_LAYOUTS

    @classmethod
    def sniff(cls, head: bytes, suffix: str) -> bool:
        return head.startswith(HDF5_SIGNATURE)

    def read_meta(self, path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> FrameMeta:
        return self._layout(path, limits).meta

    def read_frame(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> Frame:
        source = self.read_source(path, number, limits=limits)
        return source.decode() if isinstance(source, EncodedFrame) else source

    def read_source(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> Frame | EncodedFrame:
        """The frame as its checked compressed stream where it is one bitshuffle-LZ4 chunk of
        unsigned native pixels (the Dectris default), else decoded."""
        layout = self._layout(path, limits)
        found = _find_entry(layout, number, path)
        data_key = _unchanged_key(found)
        if data_key is None:
            # The data file appeared, vanished, was rewritten or had its access changed since
            # the walk: walk again.
            layout = self._layout(path, limits, stale=layout)
            found = _find_entry(layout, number, path)
            if isinstance(found, _Unavailable):
                raise type(found.error)(
                    f"{path}: frame {number} cannot be read: {found.error}"
                ) from found.error
            data_key = _unchanged_key(found) or _stat(found.path, path)
        assert isinstance(found, _Segment)  # an _Unavailable never has a current key
        if _is_streamable(found, layout):
            read = self._read_stream(found, data_key, number)
            if read is not None:
                stream, origin = read
                return EncodedFrame(stream, layout.mask, layout.meta, number, path, origin)
        stored = self._read_stored(found, data_key, number)
        pixels = _to_pixels(stored, layout.pixel_dtype)
        return Frame(pixels=pixels, mask=layout.mask, meta=layout.meta, number=number, path=path)

    def frame_files(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> tuple[str, ...]:
        """The linked data file that holds (or should hold) frame ``number``, if any."""
        layout = self._layout(path, limits)
        found = _find_entry(layout, number, path)
        return () if found.path == layout.key.path else (found.path,)

    def _layout(self, path: Path, limits: LimitSettings, stale: _Layout | None = None) -> _Layout:
        """The series' layout, parsed once per identity of the master (a stat per call)."""
        key = _stat(path, path)
        if stale is not None:
            self._layouts.discard(key)
        layout = self._layouts.get_or_build(
            key, lambda: self._build_layout(path, key, limits, stale)
        )
        if stale is None and _is_growing(layout):
            return self._layout(path, limits, stale=layout)
        # Built under these limits or others: a cached layout is held to the caller's.
        check_frame_size(path, layout.meta.width_px, layout.meta.height_px, limits)
        return layout

    def _build_layout(
        self, path: Path, key: FileKey, limits: LimitSettings, stale: _Layout | None
    ) -> _Layout:
        with _translated(path, "read the file's structure"), self._handles.open(path, key) as f:
            entries = self._walk_data(f, key, limits)
            segments = [entry for entry in entries if isinstance(entry, _Segment)]
            native = read_native_fields(f)
            if segments:
                height_px, width_px = segments[0].frame_shape
                pixel_dtype = _pixel_dtype(segments[0].stored_dtype, segments[0].path)
            else:
                height_px, width_px, pixel_dtype = _fallback_size(native, path, entries)
            check_frame_size(path, width_px, height_px, limits)  # before the mask is read
            _check_detector_size(native, width_px, height_px, path)
            first_frame, last_frame = _frame_range(segments, native, len(segments) < len(entries))
            native.update(
                image_depth=pixel_dtype.itemsize, first_frame=first_frame, last_frame=last_frame
            )
            meta = FrameMeta(
                format_name=self.format_name,
                width_px=width_px,
                height_px=height_px,
                bit_depth=pixel_dtype.itemsize * 8,
                first_frame=first_frame,
                last_frame=last_frame,
                native=native,
                **asdict(read_header_geometry(f)),
            )
            if stale is not None and stale.key == key and stale.meta.width_px == width_px:
                mask = stale.mask  # the same master file holds the same mask: skip a 16M read
            else:
                mask = read_mask(f.get(MASK_PATH), (height_px, width_px), path)
        return _Layout(key, meta, tuple(entries), mask, pixel_dtype)

    def _walk_data(
        self, f: h5py.File, key: FileKey, limits: LimitSettings
    ) -> list[_Segment | _Unavailable]:
        """Image stacks under /entry/data in name order, numbered across files."""
        group = f.get(DATA_GROUP)
        if not isinstance(group, h5py.Group):
            return []
        entries: list[_Segment | _Unavailable] = []
        next_first = 1
        for name in sorted(group):
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                data_path = os.path.join(os.path.dirname(key.path), link.filename)
                try:
                    segment = self._linked_segment(data_path, link.path, next_first, limits)
                except FrameError as exc:
                    entries.append(_Unavailable(data_path, exc))
                    continue
            else:
                item = group.get(name)
                if not isinstance(item, h5py.Dataset) or item.ndim != 3:
                    continue  # axes, soft links to nowhere: not frames
                segment = _segment(item, key.path, key, next_first, limits)
            entries.append(segment)
            next_first = segment.last + 1
        _check_segments_agree([entry for entry in entries if isinstance(entry, _Segment)])
        return entries

    def _linked_segment(
        self, data_path: str, dataset_name: str, next_first: int, limits: LimitSettings
    ) -> _Segment:
        try:
            data_key = file_key(data_path)
        except FileNotFoundError as exc:
            raise FileMissingError(f"{data_path}: linked data file does not exist") from exc
        except OSError as exc:
            raise FileAccessError(f"{data_path}: linked data file: {exc.strerror}") from exc
        with (
            _translated(data_path, "open the linked data file"),
            self._handles.open(data_path, data_key) as data_file,
        ):
            item = data_file.get(dataset_name)
            if not isinstance(item, h5py.Dataset) or item.ndim != 3:
                raise CorruptFrameError(f"{data_path}: no 3-D image stack at {dataset_name}")
            return _segment(item, data_path, data_key, next_first, limits)

    @contextmanager
    def _frame_dataset(
        self, segment: _Segment, data_key: FileKey, number: int
    ) -> Iterator[tuple[h5py.Dataset, int]]:
        """The open dataset holding frame ``number`` and its index there, errors translated."""
        index = number - segment.first
        with (
            _translated(segment.path, f"read frame {number}"),
            self._handles.open(segment.path, data_key) as f,
        ):
            dataset = f[segment.dataset_name]
            if index >= dataset.shape[0]:
                raise CorruptFrameError(
                    f"{segment.path}: frame {number} should be at index {index} but the "
                    f"dataset holds only {dataset.shape[0]} frames"
                )
            yield dataset, index

    def _read_stream(
        self, segment: _Segment, data_key: FileKey, number: int
    ) -> tuple[bslz4.Bslz4Stream, str] | None:
        """Frame ``number``'s chunk, checked but not decoded, and where it was read; None if
        it was stored unfiltered."""
        with self._frame_dataset(segment, data_key, number) as (dataset, index):
            filter_mask, chunk = dataset.id.read_direct_chunk((index, 0, 0))
        if filter_mask & 1:
            return None
        where = f"{segment.path}: chunk at {(index, 0, 0)}"
        n_elements = math.prod(segment.frame_shape)
        return _chunk_stream(chunk, n_elements, segment.stored_dtype, where), where

    def _read_stored(self, segment: _Segment, data_key: FileKey, number: int) -> np.ndarray:
        """Frame ``number`` in its stored dtype; decoding runs outside h5py's lock."""
        with self._frame_dataset(segment, data_key, number) as (dataset, index):
            if segment.bslz4_chunks is not None:
                return _read_bslz4_frame(dataset, index, segment.bslz4_chunks, segment.path)
            return dataset[index]


def _is_streamable(segment: _Segment, layout: _Layout) -> bool:
    """One frame per bitshuffle-LZ4 chunk, stored as the unsigned native pixels it shows."""
    chunks = segment.bslz4_chunks
    return (
        chunks is not None
        and chunks == (1, *segment.frame_shape)
        and segment.frame_shape == (layout.meta.height_px, layout.meta.width_px)
        and segment.stored_dtype == layout.pixel_dtype
        and segment.stored_dtype.isnative
    )


def _segment(
    dataset: h5py.Dataset, path: str, key: FileKey, next_first: int, limits: LimitSettings
) -> _Segment:
    """Frame numbers from image_nr_low/high, else continuing the previous dataset's.

    A chunk is decoded whole (by bitshuffle here, by HDF5 otherwise), so its size is held to
    ``limits.max_decompressed_bytes`` before any is read.
    """
    low = _int_attr(dataset, "image_nr_low")
    high = _int_attr(dataset, "image_nr_high")
    first = low if low is not None else next_first
    last = high if (high is not None and low is not None) else first + dataset.shape[0] - 1
    if last < first:
        raise CorruptFrameError(
            f"{path}: image_nr_high {last} is below image_nr_low {first} in {dataset.name}"
        )
    _check_chunk_size(dataset, path, limits)
    return _Segment(
        path=path,
        key=key,
        dataset_name=dataset.name,
        first=first,
        last=last,
        frame_shape=(int(dataset.shape[1]), int(dataset.shape[2])),
        stored_dtype=dataset.dtype,
        bslz4_chunks=dataset.chunks if _is_bitshuffle_lz4(dataset) else None,
    )


def _find_entry(layout: _Layout, number: int, path: Path) -> _Segment | _Unavailable:
    """The segment holding ``number``, or the unreadable data file that should hold it."""
    meta = layout.meta
    suspect: _Unavailable | None = None
    for entry in layout.entries:
        if isinstance(entry, _Unavailable):
            suspect = suspect or entry
        elif entry.first <= number <= entry.last:
            return entry
        elif entry.last < number:
            suspect = None  # the frame comes after this file: look further on
        else:
            break
    if meta.first_frame <= number <= meta.last_frame and suspect is not None:
        return suspect
    if not layout.entries:
        raise CorruptFrameError(f"{path}: no image data under {DATA_GROUP}")
    if not meta.first_frame <= number <= meta.last_frame:
        raise frame_range_error(path, number, meta.first_frame, meta.last_frame)
    ranges = ", ".join(f"{s.first}–{s.last}" for s in layout.segments)
    raise FrameRangeError(f"{path}: frame {number} is not stored in the file (stored: {ranges})")


def _is_growing(layout: _Layout) -> bool:
    """Whether the series' last linked data file changed since the layout was walked: a
    detector appending frames to it (the master stays as it was), or rewriting it."""
    last = layout.entries[-1] if layout.entries else None
    return (
        isinstance(last, _Segment) and last.path != layout.key.path and _unchanged_key(last) is None
    )


def _unchanged_key(found: _Segment | _Unavailable) -> FileKey | None:
    """The data file's identity if it is still the file the layout describes, else None."""
    if isinstance(found, _Unavailable):
        return None
    try:
        key = file_key(found.path)
    except OSError:
        return None
    return key if key == found.key else None


def _frame_range(
    segments: list[_Segment], native: dict[str, object], has_unavailable: bool
) -> tuple[int, int]:
    """From the data files; with some unreadable, a Dectris series 1..nimages × ntrigger."""
    first = min((s.first for s in segments), default=1)
    last = max((s.last for s in segments), default=first)
    if has_unavailable or not segments:
        first = min(first, 1)
        nimages, ntrigger = native.get("nimages"), native.get("ntrigger", 1)
        if isinstance(nimages, int) and isinstance(ntrigger, int) and nimages > 0:
            last = max(last, nimages * max(ntrigger, 1))
    return first, last


def _read_bslz4_frame(
    dataset: h5py.Dataset, index: int, chunks: tuple[int, int, int], path: str
) -> np.ndarray:
    """Read the chunks holding frame ``index`` raw and decode them with bitshuffle.

    The common Dectris case, one whole frame per chunk, decodes straight into the result.
    Any other chunking is assembled tile by tile, so corrupt chunks are caught the same way.
    """
    height, width = dataset.shape[1:]
    dtype = dataset.dtype
    depth_chunk, height_chunk, width_chunk = chunks
    first_index = index - index % depth_chunk
    if chunks == (1, height, width):
        return _decode_chunk(dataset, (index, 0, 0), chunks, dtype, path)[0]
    frame = np.empty((height, width), dtype=dtype)
    for y0 in range(0, height, height_chunk):
        for x0 in range(0, width, width_chunk):
            tile = _decode_chunk(dataset, (first_index, y0, x0), chunks, dtype, path)
            frame[y0 : y0 + height_chunk, x0 : x0 + width_chunk] = tile[
                index - first_index, : height - y0, : width - x0
            ]
    return frame


def _decode_chunk(
    dataset: h5py.Dataset,
    offset: tuple[int, int, int],
    chunks: tuple[int, int, int],
    dtype: np.dtype,
    path: str,
) -> np.ndarray:
    filter_mask, chunk = dataset.id.read_direct_chunk(offset)  # the only part under h5py's lock
    n_elements = int(np.prod(chunks))
    if filter_mask & 1:  # the writer stored this chunk without the filter
        if len(chunk) != n_elements * dtype.itemsize:
            raise CorruptFrameError(f"{path}: an unfiltered chunk at {offset} has a wrong size")
        return np.frombuffer(chunk, dtype=dtype).reshape(chunks).copy()
    where = f"{path}: chunk at {offset}"
    stream = _chunk_stream(chunk, n_elements, dtype, where)
    try:
        return stream.decode_all().reshape(chunks)
    except ValueError as exc:
        raise CorruptFrameError(f"{where} is {exc}") from None


def _chunk_stream(chunk: bytes, n_elements: int, dtype: np.dtype, where: str) -> bslz4.Bslz4Stream:
    """A bitshuffle-LZ4 chunk checked (header, then every block length), not yet decoded."""
    block_elements = _chunk_block_elements(chunk, n_elements, dtype.itemsize, where)
    try:
        return bslz4.Bslz4Stream.checked(
            chunk, _CHUNK_HEADER.size, n_elements, dtype, block_elements
        )
    except ValueError as exc:
        raise CorruptFrameError(f"{where} is {exc}") from None


def _chunk_block_elements(chunk: bytes, n_elements: int, itemsize: int, where: str) -> int:
    """The block size in elements from the chunk's header, once the header is checked."""
    if len(chunk) < _CHUNK_HEADER.size:
        raise CorruptFrameError(f"{where} is truncated ({len(chunk)} bytes)")
    total_bytes, block_bytes = _CHUNK_HEADER.unpack_from(chunk)
    block_elements = block_bytes // itemsize
    if (
        total_bytes != n_elements * itemsize
        or block_bytes % itemsize
        or block_elements == 0
        or block_elements % bslz4.BLOCKED_MULT
    ):
        raise CorruptFrameError(
            f"{where} has an invalid bitshuffle header ({total_bytes} bytes in blocks of "
            f"{block_bytes}; expected {n_elements * itemsize} bytes)"
        )
    return block_elements


def _check_chunk_size(dataset: h5py.Dataset, path: str, limits: LimitSettings) -> None:
    chunks = dataset.chunks
    if chunks is None:
        return
    chunk_bytes = math.prod(chunks) * dataset.dtype.itemsize
    if chunk_bytes > limits.max_decompressed_bytes:
        raise FrameTooLargeError(
            f"{path}: {dataset.name} is stored in chunks of {chunk_bytes} bytes, more than the "
            f"limit of {limits.max_decompressed_bytes} (limits.max_decompressed_bytes)"
        )


def _is_bitshuffle_lz4(dataset: h5py.Dataset) -> bool:
    """True when bitshuffle with LZ4 is the dataset's only filter (Dectris' 'bslz4')."""
    chunks = dataset.chunks
    if chunks is None or len(chunks) != 3 or dataset.dtype.itemsize not in (1, 2, 4, 8):
        return False
    plist = dataset.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return False
    filter_id, _flags, values, _name = plist.get_filter(0)
    return filter_id == BITSHUFFLE_FILTER_ID and len(values) > 4 and values[4] == _BITSHUFFLE_LZ4


def _to_pixels(stored: np.ndarray, pixel_dtype: np.dtype) -> PixelArray:
    """Native-order uint16/uint32, C-contiguous; negative signed values become the maximum.

    ``stored`` is a fresh array owned by the caller, so signed data is converted in place.
    """
    native = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("="))
    if native.dtype.kind == "u":
        return native
    negative = native < 0
    pixels = native.view(pixel_dtype)
    pixels[negative] = np.iinfo(pixel_dtype).max
    return pixels


def _pixel_dtype(stored: np.dtype, path: str) -> np.dtype:
    pixel = _PIXEL_TYPES.get(stored.newbyteorder("="))
    if pixel is None:
        raise CorruptFrameError(
            f"{path}: pixels stored as {stored} are not supported "
            "(an Eiger writes 16- or 32-bit integers)"
        )
    return pixel


def _check_segments_agree(segments: list[_Segment]) -> None:
    first = segments[0] if segments else None
    for segment in segments[1:]:
        assert first is not None
        if (segment.stored_dtype, segment.frame_shape) != (first.stored_dtype, first.frame_shape):
            raise CorruptFrameError(
                f"{segment.path}: frames are {segment.frame_shape} {segment.stored_dtype} but "
                f"{first.path} has {first.frame_shape} {first.stored_dtype}"
            )


def _fallback_size(
    native: dict[str, object], path: Path, entries: list[_Segment | _Unavailable]
) -> tuple[int, int, np.dtype]:
    """Height, width and pixel dtype from the header when no data file can be opened."""
    width, height = native.get("x_pixels_in_detector"), native.get("y_pixels_in_detector")
    bit_depth = native.get("bit_depth_image")
    if isinstance(width, int) and isinstance(height, int) and bit_depth in (16, 32):
        return height, width, np.dtype(np.uint16 if bit_depth == 16 else np.uint32)
    for entry in entries:
        if isinstance(entry, _Unavailable):
            raise type(entry.error)(f"{path}: {entry.error}") from entry.error
    if not isinstance(width, int) or not isinstance(height, int):
        raise CorruptFrameError(f"{path}: no image data under {DATA_GROUP} and no detector size")
    raise MissingMetadataError(f"{path}: no image data and no usable bit_depth_image")


def _check_detector_size(
    native: dict[str, object], width_px: int, height_px: int, path: Path | str
) -> None:
    """The data's shape wins; a header that disagrees is logged for whoever debugs it."""
    header = (native.get("x_pixels_in_detector"), native.get("y_pixels_in_detector"))
    if None not in header and header != (width_px, height_px):
        log.warning(
            "%s: header says %s x %s pixels but the data is %d x %d; using the data",
            path,
            *header,
            width_px,
            height_px,
        )


def _int_attr(dataset: h5py.Dataset, name: str) -> int | None:
    value = dataset.attrs.get(name)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return int(value) if isinstance(value, int | np.integer) else None


def _stat(path: Path | str, requested: Path | str) -> FileKey:
    """The file's identity; a missing or forbidden file becomes the project's error."""
    try:
        return file_key(path)
    except FileNotFoundError as exc:
        what = "file" if str(path) == str(requested) else f"data file of {requested}"
        raise FileMissingError(f"{path}: {what} does not exist") from exc
    except PermissionError as exc:
        raise FileAccessError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise FileAccessError(f"{path}: cannot be opened ({exc.strerror})") from exc


@contextmanager
def _translated(path: Path | str, doing: str) -> Iterator[None]:
    """The one boundary where h5py, HDF5 and OS errors become the project's errors."""
    try:
        yield
    except FrameError:
        raise
    except FileNotFoundError as exc:
        raise FileMissingError(f"{path}: file does not exist") from exc
    except PermissionError as exc:
        raise FileAccessError(f"{path}: permission denied") from exc
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CorruptFrameError(f"{path}: cannot {doing}; not a valid HDF5 file? ({exc})") from exc
