"""compressed.py: wrappers found by content, unwrapped once, OS and codec errors translated."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    UnknownFormatError,
)
from imageserver.formats.compressed import (
    HEAD_BYTES,
    compression_of,
    read_bytes,
    read_head,
    suffix_of,
)

CONTENT = b"###CBF: VERSION 1.5\r\n" + random.Random(7).randbytes(50_000)  # incompressible
WRAP: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("x.CBF.bz2", ".cbf"),
        ("frame_0001.cbf.GZ", ".cbf"),
        ("a.b.mccd", ".mccd"),
        ("image.tif", ".tif"),
        ("plain.xz", ""),
        ("noextension", ""),
    ],
)
def test_suffix_strips_one_compression_extension_and_lowers_case(name: str, suffix: str) -> None:
    assert suffix_of(Path("/data") / name) == suffix


@pytest.mark.parametrize("kind", sorted(WRAP))
def test_wrapper_is_found_by_magic_bytes_whatever_the_name(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "misnamed.cbf"  # no compression extension at all
    path.write_bytes(WRAP[kind](CONTENT))
    head = read_head(path)
    assert head.compression == kind
    assert head.head == CONTENT[:HEAD_BYTES]
    assert head.suffix == ".cbf"
    assert read_bytes(path) == CONTENT


def test_a_plain_file_named_gz_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "frame.cbf.gz"
    path.write_bytes(CONTENT)
    head = read_head(path)
    assert (head.compression, head.suffix, head.head) == (None, ".cbf", CONTENT[:HEAD_BYTES])
    assert read_bytes(path) == CONTENT


def test_magic_bytes_table() -> None:
    assert compression_of(b"\x1f\x8b\x08\x00") == "gz"
    assert compression_of(b"BZh91AY&SY") == "bz2"
    assert compression_of(b"BZhX") is None  # "BZh" must be followed by a block size digit
    assert compression_of(b"\xfd7zXZ\x00\x00") == "xz"
    assert compression_of(b"II*\x00") is None
    assert compression_of(b"") is None


def test_head_can_be_larger_and_stops_at_the_end_of_short_content(tmp_path: Path) -> None:
    path = tmp_path / "short.bin.bz2"
    path.write_bytes(bz2.compress(b"tiny"))
    assert read_head(path, 1 << 16).head == b"tiny"
    big = tmp_path / "big.bin.gz"
    big.write_bytes(gzip.compress(CONTENT))
    assert read_head(big, 20000).head == CONTENT[:20000]


def test_concatenated_gzip_members_are_all_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "two.cbf.gz"
    path.write_bytes(gzip.compress(CONTENT[:1000]) + gzip.compress(CONTENT[1000:]))
    assert read_bytes(path) == CONTENT


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope_0001.cbf.bz2"
    for call in (read_head, read_bytes):
        with pytest.raises(FileMissingError, match=r"nope_0001\.cbf\.bz2: file not found"):
            call(path)


def test_a_path_through_a_file_is_missing_too(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(FileMissingError, match=r"plain/inner\.cbf: file not found"):
        read_head(tmp_path / "plain" / "inner.cbf")


def test_a_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError, match="is a directory, not an image file"):
        read_head(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file modes")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked_0001.cbf"
    path.write_bytes(CONTENT)
    path.chmod(0)
    for call in (read_head, read_bytes):
        with pytest.raises(FileAccessError, match=r"locked_0001\.cbf: permission denied"):
            call(path)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    stored = gzip.compress(CONTENT)
    path = tmp_path / "cut_0001.cbf.gz"
    path.write_bytes(stored[: len(stored) // 2])
    assert read_head(path).head == CONTENT[:HEAD_BYTES]  # the head is still there
    with pytest.raises(CorruptFrameError, match=r"cut_0001\.cbf\.gz: truncated gz stream"):
        read_bytes(path)


def test_corrupt_bz2_stream(tmp_path: Path) -> None:
    stored = bytearray(bz2.compress(os.urandom(300_000)))
    middle = len(stored) // 2
    stored[middle : middle + 16] = bytes(b ^ 0xFF for b in stored[middle : middle + 16])
    path = tmp_path / "flipped_0001.cbf.bz2"
    path.write_bytes(bytes(stored))
    with pytest.raises(CorruptFrameError, match=r"flipped_0001\.cbf\.bz2: corrupt bz2 stream"):
        read_bytes(path)


def test_corrupt_head_of_a_compressed_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.cbf.xz"
    path.write_bytes(b"\xfd7zXZ\x00" + b"\x00" * 64)
    with pytest.raises(CorruptFrameError, match=r"garbage\.cbf\.xz: corrupt xz stream"):
        read_head(path)


def test_empty_file_has_an_empty_head(tmp_path: Path) -> None:
    path = tmp_path / "empty.cbf"
    path.write_bytes(b"")
    head = read_head(path)
    assert (head.head, head.compression) == (b"", None)
    assert read_bytes(path) == b""


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path: Path) -> None:
    import os

    from imageserver.errors import UnknownFormatError
    from imageserver.formats.compressed import read_bytes, read_head

    fifo = tmp_path / "frame.cbf"
    os.mkfifo(fifo)
    for read in (read_head, read_bytes):
        with pytest.raises(UnknownFormatError, match="not a regular file"):
            read(fifo)
