"""bitshuffle-LZ4 streams checked before they are decoded: bitshuffle trusts every length.

A stream is a run of LZ4 blocks, each a big-endian u32 length and that many bytes, then the
last ``n % 8`` elements stored as they are. bitshuffle reads each length and jumps, so one
flipped bit in a corrupt or truncated stream makes it read past its buffer and crash the
process. The lengths are walked here first, exactly as bitshuffle will walk them. Used for
Eiger chunks read from files and for cache entries written by other processes.
"""

from __future__ import annotations

import struct

import bitshuffle
import numpy as np

BLOCKED_MULT = 8
"""Block sizes are multiples of 8 elements; a shorter tail is stored uncompressed."""
_BLOCK_HEADER = struct.Struct(">I")


class Bslz4Error(ValueError):
    """Why a stream was refused; callers turn it into their own error, with context."""


def check_blocks(
    buffer: bytes | memoryview, start: int, n_elements: int, itemsize: int, block_elements: int
) -> None:
    """Walk the block lengths from ``start``; Bslz4Error unless they fill the buffer exactly."""
    n_blocks, rest = divmod(n_elements, block_elements)
    n_blocks += rest >= BLOCKED_MULT
    end = len(buffer) - (n_elements % BLOCKED_MULT) * itemsize
    position = start
    unpack = _BLOCK_HEADER.unpack_from
    for _ in range(n_blocks):
        if position + _BLOCK_HEADER.size > end:
            raise Bslz4Error("truncated or corrupt (block past the end)")
        position += _BLOCK_HEADER.size + unpack(buffer, position)[0]
    if position != end:
        raise Bslz4Error("corrupt (blocks do not fill the stream)")


def decompress(
    buffer: bytes | memoryview,
    start: int,
    shape: tuple[int, ...],
    dtype: np.dtype,
    block_elements: int,
) -> np.ndarray:
    """The stream from ``start`` decoded to ``shape``, after `check_blocks`; else Bslz4Error."""
    n_elements = 1
    for extent in shape:
        n_elements *= extent
    check_blocks(buffer, start, n_elements, dtype.itemsize, block_elements)
    stream = np.frombuffer(buffer, dtype=np.uint8, offset=start)
    try:
        return np.asarray(bitshuffle.decompress_lz4(stream, shape, dtype, block_elements))
    except (RuntimeError, ValueError) as exc:
        raise Bslz4Error(f"corrupt (bitshuffle: {exc})") from None
