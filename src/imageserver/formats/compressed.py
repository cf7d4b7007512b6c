"""gzip/bzip2/xz wrapping in one place: recognised by magic bytes, unwrapped once per read.

Beamlines compress CBF frames after collection (``.cbf.gz``, ``.cbf.bz2``), and a file renamed
by hand may carry the wrong extension, so the wrapper is found from the content. Every reader
sniffs the same unwrapped head and asks for the whole content at most once: bzip2 is the slow
case (a Pilatus 6M frame takes ~250 ms), so nothing here decompresses twice. OS and codec
errors are translated into the project's error tree here, naming the file.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import ModuleType
from typing import BinaryIO

from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    UnknownFormatError,
)

HEAD_BYTES = 4096
"""Enough for every sniff: TIFF IFD at offset 8 and the MAR header fields up to 1112."""

_MAGIC: tuple[tuple[str, bytes], ...] = (
    ("gz", b"\x1f\x8b\x08"),
    ("bz2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
)
_SUFFIXES = frozenset({".gz", ".bz2", ".xz"})
_CODECS: dict[str, ModuleType] = {"gz": gzip, "bz2": bz2, "xz": lzma}
_CODEC_ERRORS = (EOFError, zlib.error, lzma.LZMAError, ValueError)


@dataclass(frozen=True)
class Head:
    """The first bytes of a file's unwrapped content and how it was wrapped."""

    head: bytes
    compression: str | None
    suffix: str


def compression_of(prefix: bytes) -> str | None:
    """The wrapper ("gz", "bz2", "xz") or None, from the first bytes as stored on disk."""
    for name, magic in _MAGIC:
        if prefix.startswith(magic):
            if name == "bz2" and prefix[3:4] not in b"123456789":
                return None
            return name
    return None


def suffix_of(path: Path) -> str:
    """Lower-cased extension once a compression extension is removed: x.CBF.bz2 -> .cbf."""
    name = PurePath(path.name.lower())
    if name.suffix in _SUFFIXES:
        name = PurePath(name.stem)
    return name.suffix


def read_head(path: Path, max_bytes: int = HEAD_BYTES) -> Head:
    """Up to ``max_bytes`` of the unwrapped content, decompressing only what that needs."""
    with _os_errors(path), open_regular(path) as raw:
        prefix = raw.read(6)
        kind = compression_of(prefix)
        if kind is None:
            rest = raw.read(max(0, max_bytes - len(prefix)))
            return Head((prefix + rest)[:max_bytes], None, suffix_of(path))
        raw.seek(0)
        with _codec_errors(path, kind):
            return Head(_read_unwrapped(raw, kind, max_bytes), kind, suffix_of(path))


def read_bytes(path: Path) -> bytes:
    """The whole unwrapped content; the compressed stream is decoded exactly once."""
    with _os_errors(path), open_regular(path) as raw:
        stored = raw.read()
    kind = compression_of(stored[:6])
    if kind is None:
        return stored
    with _codec_errors(path, kind):
        unwrapped: bytes = _CODECS[kind].decompress(stored)
        return unwrapped


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; refuse FIFOs and devices, which could block a worker
    thread forever or stream without end (opening with O_NONBLOCK never waits for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise UnknownFormatError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_unwrapped(raw: BinaryIO, kind: str, max_bytes: int) -> bytes:
    """The first ``max_bytes`` of a compressed stream; the codec reads only what it needs."""
    if kind == "gz":
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            return stream.read(max_bytes)
    if kind == "bz2":
        with bz2.BZ2File(raw, mode="rb") as stream:
            return stream.read(max_bytes)
    with lzma.LZMAFile(raw, mode="rb") as stream:
        return stream.read(max_bytes)


@contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """The OS refusing or lacking the file, as the project's errors (original kept)."""
    try:
        yield
    except (FileMissingError, FileAccessError):
        raise
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise FileMissingError(f"{path}: file not found") from exc
    except PermissionError as exc:
        raise FileAccessError(f"{path}: permission denied") from exc
    except IsADirectoryError as exc:
        raise UnknownFormatError(f"{path}: is a directory, not an image file") from exc
    except OSError as exc:
        if exc.errno is None:  # gzip/bz2 report bad data as an OSError without errno
            raise CorruptFrameError(f"{path}: corrupt compressed data ({exc})") from exc
        raise FileAccessError(f"{path}: cannot read the file ({exc.strerror})") from exc


@contextmanager
def _codec_errors(path: Path, kind: str) -> Iterator[None]:
    """A truncated or damaged compressed stream, as CorruptFrameError naming the file."""
    try:
        yield
    except EOFError as exc:
        raise CorruptFrameError(f"{path}: truncated {kind} stream ({exc})") from exc
    except _CODEC_ERRORS as exc:
        raise CorruptFrameError(f"{path}: corrupt {kind} stream ({exc})") from exc
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise CorruptFrameError(f"{path}: corrupt {kind} stream ({exc})") from exc
