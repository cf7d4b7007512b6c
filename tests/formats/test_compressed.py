"""compressed.py: wrappers found by content, decoded once per request, errors translated."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
from collections.abc import Callable
from pathlib import Path

import fabio.cbfimage
import numpy as np
import pytest
from decoders import count_decoders
from forked import in_child, unprivileged

from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    UnknownFormatError,
)
from imageserver.formats import frame_files, open_frame, read_meta
from imageserver.formats.compressed import (
    HEAD_BYTES,
    compression_of,
    one_pass,
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


def test_permission_denied(open_dir: Path) -> None:
    """As 'nobody' in a forked child when run as root (as CI is): root ignores file modes."""
    locked, readable = open_dir / "locked_0001.cbf", open_dir / "open_0001.cbf"
    for path, mode in ((locked, 0o000), (readable, 0o644)):
        path.write_bytes(CONTENT)
        path.chmod(mode)

    def attempt() -> dict[str, object]:
        seen: dict[str, object] = {"readable": len(read_bytes(readable))}
        for call in (read_head, read_bytes):
            try:
                call(locked)
                seen[call.__name__] = "read"
            except FileAccessError as exc:
                seen[call.__name__] = str(exc)
        return seen

    seen = in_child(attempt, unprivileged())

    assert seen["readable"] == len(CONTENT)  # the child may read what its mode allows
    for name in ("read_head", "read_bytes"):
        assert str(seen[name]).endswith("locked_0001.cbf: permission denied"), seen


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


# --- one pass per request -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_cbf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("one_pass") / "small.cbf"
    data = np.arange(60 * 80, dtype=np.int32).reshape(60, 80) % 1000
    fabio.cbfimage.CbfImage(data=data).write(str(path))
    return path.read_bytes()


@pytest.mark.parametrize("kind", sorted(WRAP))
def test_a_request_decodes_a_wrapped_frame_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_cbf: bytes, kind: str
) -> None:
    """Detection's head and the reader's content come from one decoder per call."""
    path = tmp_path / f"frame_0001.cbf.{kind}"
    path.write_bytes(WRAP[kind](small_cbf))
    count = count_decoders(monkeypatch, kind)

    assert open_frame(path, 1).pixels.shape == (60, 80)
    assert count.produced_bytes == len(small_cbf)
    assert read_meta(path).width_px == 80
    assert count.produced_bytes == 2 * len(small_cbf)  # the whole text fits the meta's head
    made = count.made
    assert frame_files(path, 1) == ()  # a wrapped file is one file: nothing to decode
    assert count.made == made


def test_inside_one_pass_head_and_content_share_one_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "frame.cbf.bz2"
    path.write_bytes(bz2.compress(CONTENT))
    count = count_decoders(monkeypatch, "bz2")

    with one_pass(path) as source:
        assert read_head(path).head == CONTENT[:HEAD_BYTES]
        assert read_head(path, 20_000).head == CONTENT[:20_000]
        assert read_bytes(path) == CONTENT
        assert read_head(path, 10).head == CONTENT[:10]
        assert source.compression == "bz2"
    assert (count.made, count.fed_bytes) == (1, path.stat().st_size)
    assert count.produced_bytes == len(CONTENT)
    assert read_bytes(path) == CONTENT  # outside the block: a pass of its own
    assert (count.made, count.produced_bytes) == (2, 2 * len(CONTENT))
