"""Counting what a codec's decompressors do, whichever API drives them.

GzipFile, gzip.decompress, BZ2File, bz2.open, bz2.decompress, LZMAFile and lzma.decompress all
build their decoder from the module-level name patched here (zlib's one-shot call is patched
too, and zlib-ng's gzip reader, behind GzipNGFile and gzip_ng.decompress), so the bytes
they produce add up to the content once per pass over a file, whatever the code under test
calls: a second pass, even of the head only, shows.
"""

from __future__ import annotations

import bz2
import io
import lzma
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from zlib_ng import gzip_ng

_FACTORIES: dict[str, tuple[ModuleType, str]] = {
    "gz": (zlib, "decompressobj"),
    "bz2": (bz2, "BZ2Decompressor"),
    "xz": (lzma, "LZMADecompressor"),
}


@dataclass
class DecoderCount:
    made: int = 0
    """Decoders built (GzipFile builds two for its first member)."""
    fed_bytes: int = 0
    """Compressed bytes handed to the decoders (zlib's re-fed unconsumed tails count again)."""
    produced_bytes: int = 0
    """Decoded bytes: the content's length for exactly one pass."""


def count_decoders(monkeypatch: pytest.MonkeyPatch, kind: str) -> DecoderCount:
    """Patch ``kind``'s decompressor factory (and zlib's one-shot call) to count their use."""
    count = DecoderCount()
    module, name = _FACTORIES[kind]
    real = getattr(module, name)

    class Counting:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            count.made += 1
            self._real = real(*args, **kwargs)

        def decompress(self, data: bytes, *args: Any, **kwargs: Any) -> bytes:
            count.fed_bytes += len(data)
            result: bytes = self._real.decompress(data, *args, **kwargs)
            count.produced_bytes += len(result)
            return result

        def flush(self, *args: Any) -> bytes:  # zlib only
            result: bytes = self._real.flush(*args)
            count.produced_bytes += len(result)
            return result

        def __getattr__(self, attribute: str) -> Any:
            return getattr(self._real, attribute)

    monkeypatch.setattr(module, name, Counting)
    if kind == "gz":
        one_shot = zlib.decompress

        def counting_one_shot(data: bytes, *args: Any, **kwargs: Any) -> bytes:
            count.made += 1
            count.fed_bytes += len(data)
            result = one_shot(data, *args, **kwargs)
            count.produced_bytes += len(result)
            return result

        monkeypatch.setattr(zlib, "decompress", counting_one_shot)
        monkeypatch.setattr(gzip_ng, "_GzipReader", _counting_gzip_reader(count))
    return count


def _counting_gzip_reader(count: DecoderCount) -> type:
    real = gzip_ng._GzipReader

    class CountingGzipReader(io.RawIOBase):
        def __init__(self, *args: Any) -> None:
            count.made += 1
            self._real = real(*args)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            produced: int = self._real.readinto(buffer)
            count.produced_bytes += produced
            return produced

        def __getattr__(self, attribute: str) -> Any:
            return getattr(self._real, attribute)

    return CountingGzipReader
