"""Detector formats: which reader understands a file, and the calls the imaging code makes.

Detection is by content (dxtbx's idea without its class tree): ``compressed.read_head``
unwraps gz/bz2/xz and reads the first bytes once, every reader in ``READERS`` sniffs those
same bytes, and exactly one may claim the file. The extension only breaks ties inside a
reader's sniff (``.mccd`` for a MAR CCD TIFF whose directory is not in the head). Adding a
format: one module with a ``Reader``, one line in ``READERS``, one test with a sample.

The calls here are the boundary of the package: each decodes a wrapped file once
(``compressed.one_pass``), hands ``limits`` to the reader, and lets only the project's
errors out (``boundary.translated``).
"""

from __future__ import annotations

from pathlib import Path

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import UnknownFormatError
from imageserver.formats.base import EncodedFrame, Frame, FrameMeta, Reader
from imageserver.formats.boundary import translated
from imageserver.formats.cbf import CbfReader
from imageserver.formats.compressed import Head, one_pass, read_head
from imageserver.formats.eiger import EigerReader
from imageserver.formats.marccd import MarCCDReader
from imageserver.formats.smv import SmvReader
from imageserver.formats.tiff import TiffReader

READERS: tuple[Reader, ...] = (
    EigerReader(),
    MarCCDReader(),
    TiffReader(),
    CbfReader(),
    SmvReader(),
)
"""Most specific first; the sniffs are mutually exclusive, so the order is only a tie rule."""

_KNOWN_OTHERS = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
    b"II+\x00": "a BigTIFF",
    b"MM\x00+": "a BigTIFF",
}


def claimants(head: Head) -> list[Reader]:
    """Every reader whose sniff accepts the head; a correct table gives at most one."""
    return [reader for reader in READERS if reader.sniff(head.head, head.suffix)]


def detect_reader(path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> Reader:
    """The reader that claims ``path``; UnknownFormatError saying what the file starts with."""
    with translated(path):
        head = read_head(path, limits=limits)
    found = claimants(head)
    if not found:
        raise UnknownFormatError(f"{path}: unknown format: {describe_head(head)}")
    return found[0]


def read_meta(path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> FrameMeta:
    """What the file says about its detector and frames, without reading pixels if it can."""
    with translated(path), one_pass(path, limits):
        return detect_reader(path, limits=limits).read_meta(path, limits=limits)


def open_frame(path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS) -> Frame:
    """Frame ``number`` (1-based) of ``path`` at full depth, with its mask and metadata."""
    with translated(path), one_pass(path, limits):
        return detect_reader(path, limits=limits).read_frame(path, number, limits=limits)


def open_source(
    path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
) -> Frame | EncodedFrame:
    """Frame ``number`` of ``path``, kept compressed where its reader can decode it by rows
    (`EncodedFrame`), else decoded: what the imaging code reduces and the cache holds."""
    with translated(path), one_pass(path, limits):
        reader = detect_reader(path, limits=limits)
        read_source = getattr(reader, "read_source", None)  # optional: Eiger only
        if read_source is None:
            return reader.read_frame(path, number, limits=limits)
        source: Frame | EncodedFrame = read_source(path, number, limits=limits)
        return source


def frame_files(
    path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
) -> tuple[str, ...]:
    """Files besides ``path`` that frame ``number`` is read from (`Reader.frame_files`).

    A gz/bz2/xz file holds everything of its frame, so it is not decoded to find its reader
    (that would decode its head once more than the frame read itself does).
    """
    with translated(path), one_pass(path, limits) as source:
        if source.compression is not None:
            return ()
        return detect_reader(path, limits=limits).frame_files(path, number, limits=limits)


def describe_head(head: Head) -> str:
    """The first bytes in words a user can act on: empty, a known non-detector type, or hex."""
    after = f" after {head.compression} decompression" if head.compression else ""
    if not head.head:
        return f"the file is empty{after}"
    for magic, kind in _KNOWN_OTHERS.items():
        if head.head.startswith(magic):
            return f"it looks like {kind}{after}, not a detector image"
    first = head.head[:16]
    text = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in first)
    return f"its first bytes{after} are {first.hex(' ')} ({text!r})"
