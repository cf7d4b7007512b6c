"""An Eiger series' pixel mask, read once per distinct mask rather than once per series.

The mask of a 16M detector is 72 MB of uint32 deflated to ~125 KB: inflating it through h5py
took 300–400 ms here, into a fresh 72 MB array, on the first request of every series in
every worker. Consecutive series of one detector carry the same mask, so the deflated bytes
(read raw, 0.4 ms to hash) key a small per-process memo of the decoded mask. A miss inflates
in 1 MiB pieces straight into the 0/1 uint8 mask, with zlib-ng (21 ms for a 16M mask here
where zlib takes 194 ms), and makes no 72 MB buffer. Layouts other than one deflated or
unfiltered chunk take h5py's plain read.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
from zlib_ng import zlib_ng

from imageserver.errors import CorruptFrameError
from imageserver.formats.base import MaskArray
from imageserver.formats.compressed import INFLATE_ERROR

MEMO_SIZE = 4
"""Distinct masks kept per process: the detectors a beamline's users look at."""
PIECE_BYTES = 1 << 20
_DEFLATE = h5py.h5z.FILTER_DEFLATE

_memo: OrderedDict[tuple[object, ...], MaskArray] = OrderedDict()
_memo_lock = threading.Lock()


def read_mask(item: object, shape: tuple[int, int], path: Path | str) -> MaskArray | None:
    """pixel_mask as 0/1 uint8, read-only because every frame (and series) may share it."""
    if not isinstance(item, h5py.Dataset):
        return None
    if item.shape != shape:
        raise CorruptFrameError(
            f"{path}: pixel_mask is {item.shape[::-1]} but the images are {shape[::-1]} (w x h)"
        )
    raw = _single_chunk(item)
    if raw is None:
        return _frozen(np.not_equal(item[()], 0).view(np.uint8))
    data, is_deflated = raw
    key = (hashlib.blake2b(data, digest_size=16).digest(), item.dtype.str, shape, is_deflated)
    with _memo_lock:
        mask = _memo.get(key)
        if mask is not None:
            _memo.move_to_end(key)
            return mask
    mask = _frozen(_decode(data, is_deflated, item.dtype, shape, path))
    with _memo_lock:
        _memo[key] = mask
        while len(_memo) > MEMO_SIZE:
            _memo.popitem(last=False)
    return mask


def _single_chunk(item: h5py.Dataset) -> tuple[bytes, bool] | None:
    """The stored bytes of a mask kept in one chunk with deflate or no filter; else None."""
    if item.chunks != item.shape or item.dtype.kind not in "ui":
        return None
    plist = item.id.get_create_plist()
    filters = [plist.get_filter(index)[0] for index in range(plist.get_nfilters())]
    if filters not in ([], [_DEFLATE]):
        return None
    filter_mask, data = item.id.read_direct_chunk((0,) * len(item.shape))
    return bytes(data), bool(filters) and not filter_mask & 1


def _decode(
    data: bytes, is_deflated: bool, dtype: np.dtype, shape: tuple[int, int], path: Path | str
) -> np.ndarray:
    n_pixels = shape[0] * shape[1]
    size = n_pixels * dtype.itemsize
    if not is_deflated:
        if len(data) != size:
            raise CorruptFrameError(f"{path}: pixel_mask holds {len(data)} bytes, not {size}")
        return np.not_equal(np.frombuffer(data, dtype), 0).view(np.uint8).reshape(shape)
    mask = np.empty(n_pixels, dtype=np.uint8)
    inflater = zlib_ng.decompressobj()
    pending, done, carry = data, 0, b""
    try:
        while done < size:
            piece = carry + inflater.decompress(pending, PIECE_BYTES)
            pending = inflater.unconsumed_tail
            if len(piece) == len(carry):
                break
            whole = len(piece) - len(piece) % dtype.itemsize
            values = np.frombuffer(piece, dtype, count=whole // dtype.itemsize)
            if done // dtype.itemsize + values.size > n_pixels:
                raise CorruptFrameError(f"{path}: pixel_mask inflates to more than {size} bytes")
            start = done // dtype.itemsize
            np.not_equal(values, 0, out=mask[start : start + values.size].view(bool))
            done += whole
            carry = piece[whole:]
    except INFLATE_ERROR as exc:
        raise CorruptFrameError(f"{path}: pixel_mask is corrupt ({exc})") from None
    if done != size or inflater.decompress(pending, 1):
        raise CorruptFrameError(f"{path}: pixel_mask inflates to {done} bytes, not {size}")
    return mask.reshape(shape)


def _frozen(mask: np.ndarray) -> MaskArray:
    mask.setflags(write=False)
    return mask
