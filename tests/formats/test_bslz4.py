"""bitshuffle-LZ4 streams: decoded when whole, refused (never crashing) when damaged."""

from __future__ import annotations

import bitshuffle
import numpy as np
import pytest

from imageserver.formats import bslz4

BLOCK = 2048


def stream_of(values: np.ndarray, prefix: bytes = b"") -> bytes:
    return prefix + bytes(bitshuffle.compress_lz4(values, BLOCK))


@pytest.mark.parametrize("n_elements", [8, 2048, 5000, 5003])  # with and without a raw tail
def test_a_whole_stream_decodes_after_any_prefix(n_elements: int) -> None:
    values = np.random.default_rng(n_elements).integers(0, 1000, n_elements, dtype=np.uint32)
    data = stream_of(values, prefix=b"HEAD")
    decoded = bslz4.decompress(data, 4, (n_elements,), values.dtype, BLOCK)
    np.testing.assert_array_equal(decoded, values)


def test_a_truncated_stream_is_refused() -> None:
    values = np.arange(5000, dtype=np.uint32)
    data = stream_of(values)
    with pytest.raises(ValueError, match="block past the end"):
        bslz4.decompress(data[:40], 0, (5000,), values.dtype, BLOCK)


def test_a_block_length_pointing_outside_is_refused() -> None:
    values = np.arange(5000, dtype=np.uint32)
    data = bytearray(stream_of(values))
    data[0:4] = (1 << 31).to_bytes(4, "big")  # bitshuffle would jump 2 GB ahead
    with pytest.raises(ValueError, match="truncated or corrupt"):
        bslz4.decompress(bytes(data), 0, (5000,), values.dtype, BLOCK)


def test_bytes_left_over_are_refused() -> None:
    values = np.arange(4096, dtype=np.uint16)
    data = stream_of(values) + b"\0\0\0\0"
    with pytest.raises(ValueError, match="do not fill"):
        bslz4.decompress(data, 0, (4096,), values.dtype, BLOCK)


@pytest.mark.parametrize("n_elements", [8, 2048, 5000, 5003, 6151])  # full, partial, raw tail
def test_any_range_decodes_from_the_blocks_that_hold_it(n_elements: int) -> None:
    values = np.random.default_rng(n_elements).integers(0, 1000, n_elements, dtype=np.uint32)
    stream = bslz4.Bslz4Stream.checked(
        stream_of(values, prefix=b"HEAD"), 4, n_elements, values.dtype, BLOCK
    )
    assert len(stream.offsets) == n_elements // BLOCK + (n_elements % BLOCK >= 8) + 1
    edges = sorted({0, 1, 7, 2047, 2048, 2049, 4096, 5000, n_elements - 3, n_elements})
    for first in edges:
        for stop in edges:
            if 0 <= first <= stop <= n_elements:
                np.testing.assert_array_equal(stream.decode(first, stop), values[first:stop])


@pytest.mark.parametrize("n_elements", [20_000, 20_483, 26_629])  # full, partial, raw tail
def test_a_whole_stream_decodes_in_pieces_over_threads(
    n_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bslz4, "PARALLEL_ELEMENTS", 1000)  # the path a 16M frame takes
    values = np.random.default_rng(n_elements).integers(0, 1000, n_elements, dtype=np.uint32)
    stream = bslz4.Bslz4Stream.checked(stream_of(values), 0, n_elements, values.dtype, BLOCK)
    for piece in (BLOCK, 3 * BLOCK, 1 << 18):
        np.testing.assert_array_equal(stream.decode_all(piece), values)
    np.testing.assert_array_equal(
        bslz4.decompress(stream_of(values), 0, (n_elements,), values.dtype, BLOCK), values
    )
