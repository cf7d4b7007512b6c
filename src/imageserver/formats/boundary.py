"""The edge of formats/: whatever a reader or a library raises leaves it as the project's error.

Readers translate the failures they expect, in words about the file; this catches the rest
(h5py, fabio, numpy and codec errors on input nobody foresaw), so a damaged file is a
CorruptFrameError for its user and never an unhandled ValueError for the worker. The original
stays as ``__cause__``. Types other than the usual foreign ones are logged with their
traceback as well, because they may be bugs of our own rather than bad files.
"""

from __future__ import annotations

import errno
import logging
import lzma
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    ImageServerError,
    ResourceLimitError,
)

log = logging.getLogger(__name__)

_DETAIL_CHARS = 300
_FOREIGN = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ArithmeticError,
    RuntimeError,
    BufferError,
)
"""What libraries raise on bad input (h5py: OSError, KeyError, ValueError, RuntimeError...)."""
_DENIED = (errno.EACCES, errno.EPERM)
_MISSING = (errno.ENOENT, errno.ENOTDIR)


@contextmanager
def translated(path: Path | str) -> Iterator[None]:
    """Run the block; any exception but the project's own leaves it as one, naming ``path``."""
    try:
        yield
    except ImageServerError:
        raise
    except MemoryError as exc:
        raise ResourceLimitError(f"not enough memory to read {path}") from exc
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in _DENIED:
            raise FileAccessError(f"{path}: permission denied") from exc
        if isinstance(exc, FileNotFoundError) or exc.errno in _MISSING:
            raise FileMissingError(f"{path}: file not found") from exc
        raise CorruptFrameError(f"{path}: cannot be read ({_detail(exc)})") from exc
    except Exception as exc:
        if not isinstance(exc, _FOREIGN):
            log.warning("%s: unexpected %s, reported as corrupt", path, type(exc).__name__,
                        exc_info=exc)  # fmt: skip
        raise CorruptFrameError(f"{path}: corrupt or unsupported content ({_detail(exc)})") from exc


def _detail(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > _DETAIL_CHARS:
        text = text[: _DETAIL_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
