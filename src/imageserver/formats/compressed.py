"""gzip/bzip2/xz wrapping in one place: recognised by magic bytes, decoded once per request.

Beamlines compress CBF frames after collection (``.cbf.gz``, ``.cbf.bz2``), and a file renamed
by hand may carry the wrong extension, so the wrapper is found from the content. Detection
needs the first bytes and a frame read needs them all; `Unwrapped` keeps its decoder and what
it decoded, so both come from one pass. bzip2 is the slow case (a Pilatus 6M frame takes
~250 ms), so nothing decodes twice: inside ``one_pass(path)`` (which ``formats`` opens around
each call) `read_head` and `read_bytes` of that path share one `Unwrapped`.

Content is decoded in bounded steps and capped at ``limits.max_decompressed_bytes``: a 4 MB
gzip bomb that inflates to 4 GB is refused once the limit is passed, never held. OS and codec
errors are translated into the project's error tree here, naming the file.
"""

from __future__ import annotations

import bz2
import errno
import io
import lzma
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import TracebackType
from typing import BinaryIO, cast

from zlib_ng import gzip_ng, zlib_ng

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    FrameTooLargeError,
    UnknownFormatError,
)

HEAD_BYTES = 4096
"""Enough for every sniff: TIFF IFD at offset 8 and the MAR header fields up to 1112."""

STEP_BYTES = 1 << 20
"""Decoded per step: the most a decoder produces beyond what has been checked."""

_MAGIC: tuple[tuple[str, bytes], ...] = (
    ("gz", b"\x1f\x8b\x08"),
    ("bz2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
)
_PREFIX_BYTES = 6
"""The longest magic (xz)."""
_SUFFIXES = frozenset({".gz", ".bz2", ".xz"})
_DECODERS: dict[str, Callable[[BinaryIO], io.BufferedIOBase]] = {
    "gz": lambda raw: gzip_ng.GzipNGFile(fileobj=raw, mode="rb"),  # zlib-ng: 3-9× zlib
    "bz2": lambda raw: bz2.BZ2File(raw, mode="rb"),
    "xz": lambda raw: lzma.LZMAFile(raw, mode="rb"),  # noqa: SIM115 (Unwrapped closes it)
}
INFLATE_ERROR = cast(type[Exception], zlib_ng.error)
"""zlib-ng's error class (its stub declares an instance)."""
_CODEC_ERRORS = (EOFError, zlib.error, INFLATE_ERROR, lzma.LZMAError, ValueError)
_ACTIVE: ContextVar[Unwrapped | None] = ContextVar("imageserver_unwrapped", default=None)


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


class Unwrapped:
    """One file's unwrapped content, decoded at most once: the head first, the rest on demand.

    Used by one thread at a time; ``close`` (or the ``with`` block) releases the file.
    """

    def __init__(self, path: Path, limits: LimitSettings = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.limits = limits
        with _os_errors(path):
            self._raw = open_regular(path)
        try:
            with _os_errors(path):
                self.compression = compression_of(self._raw.read(_PREFIX_BYTES))
                self._raw.seek(0)
        except BaseException:
            self._raw.close()
            raise
        self._stream: io.BufferedIOBase | io.FileIO | None = None  # made when first read
        self._decoded = io.BytesIO()
        self._at_end = False
        self._content: bytes | None = None

    def head(self, max_bytes: int = HEAD_BYTES) -> Head:
        """Up to ``max_bytes`` of the unwrapped content, decoding only as far as that needs."""
        if self._content is not None:
            head = self._content[:max_bytes]
        else:
            self._fill(min(max_bytes, self.limits.max_decompressed_bytes + 1))
            with self._decoded.getbuffer() as decoded:
                head = bytes(decoded[:max_bytes])
        return Head(head, self.compression, suffix_of(self.path))

    def content(self) -> bytes:
        """The whole unwrapped content; FrameTooLargeError beyond the limit, before it is held."""
        if self._content is None:
            if self.compression is None:
                self._content = self._read_plain()
            else:
                self._fill(self.limits.max_decompressed_bytes + 1)
                self._content = self._decoded.getvalue()  # the buffer itself, not a copy
        return self._content

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._raw.close()

    def __enter__(self) -> Unwrapped:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _fill(self, target: int) -> None:
        """Decode until ``target`` bytes are held or the stream ends, a step at a time."""
        decoded = self._decoded
        with _os_errors(self.path), _codec_errors(self.path, self.compression):
            if self._stream is None:
                kind = self.compression
                self._stream = self._raw if kind is None else _DECODERS[kind](self._raw)
            while not self._at_end and decoded.tell() < target:
                step = self._stream.read(min(STEP_BYTES, target - decoded.tell()))
                self._at_end = not step
                decoded.write(step)
        if decoded.tell() > self.limits.max_decompressed_bytes:
            raise self._too_large(decoded.tell())

    def _read_plain(self) -> bytes:
        """The file as stored, in one read sized by fstat, once its size is within the limit."""
        limit = self.limits.max_decompressed_bytes
        content = b""
        with _os_errors(self.path):
            size = os.fstat(self._raw.fileno()).st_size
            if size <= limit:
                self._raw.seek(0)
                content = self._raw.readall()  # one buffer, of the size fstat gives
                size = len(content)  # the file may have grown since
        if size > limit:
            raise self._too_large(size)
        return content

    def _too_large(self, seen_bytes: int) -> FrameTooLargeError:
        limit = f"the limit of {self.limits.max_decompressed_bytes} bytes"
        if self.compression is None:
            amount = f"the file holds {seen_bytes} bytes, more than {limit}"
        else:  # decoding stopped at the limit: the true size stays unknown
            amount = f"the file's {self.compression} content inflates to more than {limit}"
        return FrameTooLargeError(
            f"{self.path}: {amount} (limits.max_decompressed_bytes); refused before it was held"
        )


@contextmanager
def one_pass(path: Path, limits: LimitSettings = DEFAULT_LIMITS) -> Iterator[Unwrapped]:
    """Within the block, `read_head` and `read_bytes` of ``path`` share one `Unwrapped`."""
    with Unwrapped(path, limits) as source:
        token = _ACTIVE.set(source)
        try:
            yield source
        finally:
            _ACTIVE.reset(token)


def read_head(
    path: Path, max_bytes: int = HEAD_BYTES, *, limits: LimitSettings = DEFAULT_LIMITS
) -> Head:
    """Up to ``max_bytes`` of the unwrapped content, decompressing only what that needs."""
    active = _active(path)
    if active is not None:
        return active.head(max_bytes)
    with Unwrapped(path, limits) as source:
        return source.head(max_bytes)


def read_bytes(path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> bytes:
    """The whole unwrapped content, capped by ``limits``; decoded once per `one_pass`."""
    active = _active(path)
    if active is not None:
        return active.content()
    with Unwrapped(path, limits) as source:
        return source.content()


def _active(path: Path) -> Unwrapped | None:
    source = _ACTIVE.get()
    return source if source is not None and source.path == Path(path) else None


def open_regular(path: Path) -> io.FileIO:
    """Open a regular file for reading, unbuffered (whole reads need no copy); refuse FIFOs and
    devices, which could block a worker thread forever or stream without end (opening with
    O_NONBLOCK never waits for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise UnknownFormatError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
def _codec_errors(path: Path, kind: str | None) -> Iterator[None]:
    """A truncated or damaged compressed stream, as CorruptFrameError naming the file."""
    if kind is None:  # a plain file: only the OS can fail it
        yield
        return
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
