"""bitshuffle-LZ4 streams checked before they are decoded: bitshuffle trusts every length.

A stream is a run of LZ4 blocks, each a big-endian u32 length and that many bytes, then the
last ``n % 8`` elements stored as they are. bitshuffle reads each length and jumps, so one
flipped bit in a corrupt or truncated stream makes it read past its buffer and crash the
process. The lengths are walked here first, exactly as bitshuffle will walk them. Used for
Eiger chunks read from files and for cache entries written by other processes.

Each block is a run of consecutive elements that decodes on its own, so a `Bslz4Stream`
(the checked stream with the offset of every block) decodes any range of elements by
decoding only the blocks that hold it: rows of a frame, a strip at a time, into a buffer
that stays in the processor's cache, instead of the whole 72 MB frame (see
`imaging.reduce`).

bitshuffle's own OpenMP threads are switched off (``OMP_NUM_THREADS=1`` unless set, in the
package's ``__init__`` so that it precedes every import of bitshuffle or hdf5plugin, whose
bundled OpenMP libraries read it once when they load): the callers decode pieces on their
own threads, and an OpenMP team per call of a piece costs more than the piece (measured: a
16M frame in 64-row strips on two threads of ours 24 ms, with OpenMP's threads as well 28).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import bitshuffle
import numba
import numpy as np

from imageserver.jit import njit_cached
from imageserver.threads import THREADS, run_blocks

PIECE_ELEMENTS = 1 << 18
"""Elements decoded per bitshuffle call when a whole stream is decoded: 1 MB of uint32."""
PARALLEL_ELEMENTS = 1 << 22
"""Streams shorter than this decode in one call (a 1024 view: 1.8 ms, against 2.6 in two
threads' pieces); a 16M frame in pieces on two threads takes half the time of one call."""
BLOCKED_MULT = 8
"""Block sizes are multiples of 8 elements; a shorter tail is stored uncompressed."""


def block_offsets(
    buffer: bytes | memoryview, start: int, n_elements: int, itemsize: int, block_elements: int
) -> np.ndarray:
    """Where each block starts (then where the blocks end), once they are checked to fill
    the stream exactly; ValueError saying why not."""
    n_blocks, rest = divmod(n_elements, block_elements)
    n_blocks += rest >= BLOCKED_MULT
    end = len(buffer) - (n_elements % BLOCKED_MULT) * itemsize
    offsets = np.empty(n_blocks + 1, dtype=np.int64)
    position = _walk_blocks(np.frombuffer(buffer, np.uint8), start, end, offsets)
    if position < 0:
        raise ValueError("truncated or corrupt (block past the end)")
    if position != end:
        raise ValueError("corrupt (blocks do not fill the stream)")
    return offsets


@njit_cached(
    [
        numba.int64(
            numba.types.Array(numba.uint8, 1, "C", readonly=True),
            numba.int64,
            numba.int64,
            numba.types.Array(numba.int64, 1, "C"),
        )
    ]
)
def _walk_blocks(data, position, end, offsets):
    """Fill ``offsets`` with the start of each length-prefixed block from ``position`` and,
    last, where they end; -1 if one passes ``end``.

    Compiled: a 16M frame has 8,800 blocks, 3.5 ms as a Python loop, 1.3 ms here (each
    length is a load that depends on the one before, so memory latency bounds it).
    """
    for b in range(offsets.shape[0] - 1):
        if position + 4 > end:
            return -1
        offsets[b] = position
        length = (
            (np.int64(data[position]) << 24)
            | (np.int64(data[position + 1]) << 16)
            | (np.int64(data[position + 2]) << 8)
            | np.int64(data[position + 3])
        )
        position += 4 + length
    offsets[offsets.shape[0] - 1] = position
    return position


@dataclass(frozen=True, eq=False)  # holds a buffer: compared by identity
class Bslz4Stream:
    """A checked stream of ``n_elements`` of ``dtype``, decodable by ranges of elements."""

    buffer: bytes | memoryview
    offsets: np.ndarray
    """Start of every block in ``buffer``, then the end of the last one (`block_offsets`)."""
    n_elements: int
    dtype: np.dtype
    block_elements: int

    @classmethod
    def checked(
        cls,
        buffer: bytes | memoryview,
        start: int,
        n_elements: int,
        dtype: np.dtype,
        block_elements: int,
    ) -> Bslz4Stream:
        """The stream from ``start`` after `block_offsets` checked it; else ValueError."""
        offsets = block_offsets(buffer, start, n_elements, dtype.itemsize, block_elements)
        return cls(buffer, offsets, n_elements, np.dtype(dtype), block_elements)

    @property
    def nbytes(self) -> int:
        return len(self.buffer) + int(self.offsets.nbytes)

    def decode(self, first: int, stop: int) -> np.ndarray:
        """Elements [first, stop) as a 1-D array (a slice of the decoded blocks that hold
        them); ValueError if bitshuffle still finds the stream corrupt."""
        first, stop = max(0, first), min(self.n_elements, stop)
        if stop <= first:
            return np.empty(0, dtype=self.dtype)
        n_blocks = self.offsets.shape[0] - 1
        block_a = first // self.block_elements
        block_b = min(n_blocks, -(-stop // self.block_elements))
        # The last block range also takes the raw tail: the stream's end, not the blocks' end.
        end = int(self.offsets[block_b]) if block_b < n_blocks else len(self.buffer)
        origin = block_a * self.block_elements
        count = (
            self.n_elements - origin
            if block_b == n_blocks
            else block_b * self.block_elements - origin
        )
        piece = np.frombuffer(self.buffer, np.uint8)[int(self.offsets[block_a]) : end]
        try:
            decoded = bitshuffle.decompress_lz4(piece, (count,), self.dtype, self.block_elements)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"corrupt (bitshuffle: {exc})") from None
        return np.asarray(decoded)[first - origin : stop - origin]

    def decode_all(self, piece_elements: int = PIECE_ELEMENTS) -> np.ndarray:
        """Every element, decoded a piece at a time over the process's threads (bitshuffle's
        own threads are off, see the module docstring) and copied out while cache-hot."""
        if self.n_elements < PARALLEL_ELEMENTS:  # one call: cheaper than threads and a copy
            return self.decode(0, self.n_elements)
        blocks_per_piece = max(1, piece_elements // self.block_elements)
        step = blocks_per_piece * self.block_elements
        out = np.empty(self.n_elements, dtype=self.dtype)

        def decode_range(start: int, stop: int) -> None:
            for first in range(start, stop, step):
                last = min(stop, first + step)
                out[first:last] = self.decode(first, last)

        blocks = -(-self.n_elements // self.block_elements)
        edges = [
            min(self.n_elements, round(blocks * k / THREADS) * self.block_elements)
            for k in range(THREADS + 1)
        ]
        run_blocks(decode_range, [(a, b) for a, b in itertools.pairwise(edges) if b > a])
        return out


def decompress(
    buffer: bytes | memoryview,
    start: int,
    shape: tuple[int, ...],
    dtype: np.dtype,
    block_elements: int,
) -> np.ndarray:
    """The stream from ``start`` decoded to ``shape``, after `block_offsets`; else ValueError
    saying why (callers turn it into their own error, with context)."""
    stream = Bslz4Stream.checked(buffer, start, math.prod(shape), dtype, block_elements)
    return stream.decode_all().reshape(shape)
