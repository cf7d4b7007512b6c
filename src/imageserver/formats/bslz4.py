"""bitshuffle-LZ4 streams checked before they are decoded: bitshuffle trusts every length.

A stream is a run of LZ4 blocks, each a big-endian u32 length and that many bytes, then the
last ``n % 8`` elements stored as they are. bitshuffle reads each length and jumps, so one
flipped bit in a corrupt or truncated stream makes it read past its buffer and crash the
process. The lengths are walked here first, exactly as bitshuffle will walk them. Used for
Eiger chunks read from files and for cache entries written by other processes.
"""

from __future__ import annotations

import math

import bitshuffle
import numba
import numpy as np

from imageserver.jit import njit_cached

BLOCKED_MULT = 8
"""Block sizes are multiples of 8 elements; a shorter tail is stored uncompressed."""


def check_blocks(
    buffer: bytes | memoryview, start: int, n_elements: int, itemsize: int, block_elements: int
) -> None:
    """Walk the block lengths from ``start``; ValueError unless they fill the buffer exactly."""
    n_blocks, rest = divmod(n_elements, block_elements)
    n_blocks += rest >= BLOCKED_MULT
    end = len(buffer) - (n_elements % BLOCKED_MULT) * itemsize
    position = _walk_blocks(np.frombuffer(buffer, np.uint8), start, n_blocks, end)
    if position < 0:
        raise ValueError("truncated or corrupt (block past the end)")
    if position != end:
        raise ValueError("corrupt (blocks do not fill the stream)")


@njit_cached(
    [numba.int64(numba.types.Array(numba.uint8, 1, "C", readonly=True), *[numba.int64] * 3)]
)
def _walk_blocks(data, position, n_blocks, end):
    """Where ``n_blocks`` length-prefixed blocks from ``position`` end; -1 if one passes ``end``.

    Compiled: a 16M frame has 8,800 blocks, 3.5 ms as a Python loop, 1.3 ms here (each
    length is a load that depends on the one before, so memory latency bounds it).
    """
    for _ in range(n_blocks):
        if position + 4 > end:
            return -1
        length = (
            (np.int64(data[position]) << 24)
            | (np.int64(data[position + 1]) << 16)
            | (np.int64(data[position + 2]) << 8)
            | np.int64(data[position + 3])
        )
        position += 4 + length
    return position


def decompress(
    buffer: bytes | memoryview,
    start: int,
    shape: tuple[int, ...],
    dtype: np.dtype,
    block_elements: int,
) -> np.ndarray:
    """The stream from ``start`` decoded to ``shape``, after `check_blocks`; else ValueError
    saying why (callers turn it into their own error, with context)."""
    check_blocks(buffer, start, math.prod(shape), dtype.itemsize, block_elements)
    stream = np.frombuffer(buffer, dtype=np.uint8, offset=start)
    try:
        return np.asarray(bitshuffle.decompress_lz4(stream, shape, dtype, block_elements))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"corrupt (bitshuffle: {exc})") from None
