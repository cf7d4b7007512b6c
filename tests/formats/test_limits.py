"""Limits: decompression bombs refused before they are held, header sizes before allocation."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import fabio.cbfimage
import h5py
import numpy as np
import pytest

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError, FrameTooLargeError
from imageserver.formats import open_frame, read_meta
from imageserver.formats.compressed import STEP_BYTES, read_bytes
from imageserver.sampledata.marccd import write_marccd, write_monitor_tiff

BOMB_BYTES = 4 << 30
MEMBER_BYTES = 8 << 20
SMALL = LimitSettings(max_decompressed_bytes=1 << 20, max_frame_pixels=1 << 16)
"""The smallest limits the settings allow, so real small files can exceed them."""
SLACK_BYTES = 8 << 20
"""Decoder state (bzip2's is ~3.5 MB), one decoded step and its copy."""

Read = Callable[[Path, LimitSettings], object]
READS: dict[str, Read] = {
    "read_meta": lambda path, limits: read_meta(path, limits=limits),
    "open_frame": lambda path, limits: open_frame(path, 1, limits=limits),
}
_COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gz": lambda data: gzip.compress(data, 9),
    "bz2": lambda data: bz2.compress(data, 9),
    "xz": lambda data: lzma.compress(data, preset=0),
}


# --- decompression bombs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CBF-looking file per codec that inflates to 4 GiB: a header, then one compressed
    member of zeros written over and over (gz members, bz2 and xz streams may follow
    each other), so writing it takes one small compression and a few MB of disk."""
    directory = tmp_path_factory.mktemp("bombs")
    head = b"###CBF: VERSION 1.5\r\n# a decompression bomb\r\n"
    paths = {}
    for kind, compress in _COMPRESS.items():
        path = paths[kind] = directory / f"bomb_0001.cbf.{kind}"
        member = compress(bytes(MEMBER_BYTES))
        with path.open("wb") as out:
            out.write(compress(head))
            for _ in range(BOMB_BYTES // MEMBER_BYTES):
                out.write(member)
    return paths


def peak_bytes_of(call: Callable[[], object]) -> tuple[int, BaseException | None]:
    """The most Python held at once during ``call`` (tracemalloc), and what it raised."""
    tracemalloc.start()
    raised = None
    try:
        call()
    except Exception as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


@pytest.mark.parametrize("kind", sorted(_COMPRESS))
def test_the_bombs_are_real(bombs: dict[str, Path], kind: str) -> None:
    """A few MB on disk; the standard library decodes them member after member."""
    assert bombs[kind].stat().st_size < 5 << 20
    opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind]
    with opener(bombs[kind], "rb") as stream:
        assert stream.read(20) == b"###CBF: VERSION 1.5\r"
        stream.read(3 * MEMBER_BYTES)
        assert stream.read(1) == b"\x00"  # past the third member: still going


@pytest.mark.parametrize("kind", sorted(_COMPRESS))
@pytest.mark.parametrize("read", sorted(READS))
def test_a_bomb_is_refused_past_a_low_limit(bombs: dict[str, Path], kind: str, read: str) -> None:
    started = time.monotonic()
    peak, raised = peak_bytes_of(lambda: READS[read](bombs[kind], SMALL))

    assert isinstance(raised, FrameTooLargeError), raised
    assert str(raised) == (
        f"{bombs[kind]}: the file's {kind} content inflates to more than the limit of 1048576"
        " bytes (limits.max_decompressed_bytes); refused before it was held"
    )
    assert peak < SMALL.max_decompressed_bytes + SLACK_BYTES
    assert time.monotonic() - started < 5


def test_what_a_bomb_makes_held_grows_with_the_limit_not_the_bomb(
    bombs: dict[str, Path],
) -> None:
    """4 GiB from a 4 MB file: decoding stops at the limit, and no more is ever held."""
    limit = 64 << 20
    peak, raised = peak_bytes_of(
        lambda: open_frame(bombs["gz"], 1, limits=LimitSettings(max_decompressed_bytes=limit))
    )

    assert isinstance(raised, FrameTooLargeError), raised
    assert (
        f"bomb_0001.cbf.gz: the file's gz content inflates to more than the limit of {limit}"
        in (str(raised))
    )
    assert limit < peak < limit * 9 // 8 + SLACK_BYTES  # a growing buffer's 1/8 headroom at most


def test_content_at_the_limit_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    limit = SMALL.max_decompressed_bytes
    content = b"x" * limit
    for kind, compress in _COMPRESS.items():
        exact, over = tmp_path / f"exact.{kind}", tmp_path / f"over.{kind}"
        exact.write_bytes(compress(content))
        over.write_bytes(compress(content + b"x"))
        assert read_bytes(exact, limits=SMALL) == content
        with pytest.raises(FrameTooLargeError, match=rf"over\.{kind}: the file's {kind} content"):
            read_bytes(over, limits=SMALL)
    assert limit >= STEP_BYTES  # the cap is checked in steps no larger than the limit itself


def test_a_plain_file_beyond_the_limit_is_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge_0001.cbf"
    with path.open("wb") as out:
        out.write(b"###CBF: VERSION 1.5\r\n")
        out.truncate(SMALL.max_decompressed_bytes + 1)  # sparse: no disk used
    for read in READS.values():
        with pytest.raises(
            FrameTooLargeError,
            match=r"huge_0001\.cbf: the file holds 1048577 bytes, more than the limit of 1048576",
        ):
            read(path, SMALL)


# --- sizes declared by headers ----------------------------------------------------------------


@pytest.fixture
def small_cbf(tmp_path: Path) -> bytes:
    path = tmp_path / "source.cbf"
    fabio.cbfimage.CbfImage(data=np.ones((20, 30), dtype=np.int32)).write(str(path))
    return path.read_bytes()


def cbf_declaring(content: bytes, width: bytes, height: bytes) -> bytes:
    return content.replace(
        b"X-Binary-Size-Fastest-Dimension: 30", b"X-Binary-Size-Fastest-Dimension: " + width
    ).replace(b"X-Binary-Size-Second-Dimension: 20", b"X-Binary-Size-Second-Dimension: " + height)


@pytest.mark.parametrize("read", sorted(READS))
def test_cbf_declaring_a_huge_frame_is_refused_before_fabio_allocates(
    small_cbf: bytes, tmp_path: Path, read: str
) -> None:
    """100000 × 100000 int32 would be a 40 GB allocation inside fabio."""
    path = tmp_path / "huge_0001.cbf"
    path.write_bytes(cbf_declaring(small_cbf, b"100000", b"100000"))
    with pytest.raises(
        FrameTooLargeError, match=r"huge_0001\.cbf: the frame is 100000 x 100000 = 10000000000"
    ):
        READS[read](path, DEFAULT_LIMITS)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (b"0", b"20", "impossible frame size of 0 x 20"),
        (b"30", b"99999999", "impossible frame size of 30 x 99999999"),
        (b"-30", b"20", "lacks a valid X-Binary-Size-Fastest-Dimension"),
        (b"9" * 5000, b"20", "lacks a valid X-Binary-Size-Fastest-Dimension"),
    ],
    ids=["zero", "absurd", "negative", "5000-digits"],
)
@pytest.mark.parametrize("read", sorted(READS))
def test_cbf_declaring_an_impossible_size_is_corrupt(
    small_cbf: bytes, tmp_path: Path, width: bytes, height: bytes, message: str, read: str
) -> None:
    path = tmp_path / "odd_0001.cbf"
    path.write_bytes(cbf_declaring(small_cbf, width, height))
    with pytest.raises(CorruptFrameError, match=rf"odd_0001\.cbf: .*{message}"):
        READS[read](path, DEFAULT_LIMITS)


@pytest.mark.parametrize("read", sorted(READS))
def test_a_real_frame_just_over_the_pixel_limit(tmp_path: Path, read: str) -> None:
    path = tmp_path / "wide_0001.cbf"
    fabio.cbfimage.CbfImage(data=np.ones((257, 256), dtype=np.int32)).write(str(path))
    with pytest.raises(FrameTooLargeError, match=r"wide_0001\.cbf: .*more than the limit of 65536"):
        READS[read](path, SMALL)
    READS[read](path, DEFAULT_LIMITS)  # within the defaults it reads


SMV_HEADER = b"{\nHEADER_BYTES=  512;\nTYPE=unsigned_short;\nSIZE1=%s;\nSIZE2=%s;\n}"


@pytest.mark.parametrize(
    ("size1", "size2", "error", "message"),
    [
        (b"100000", b"100000", FrameTooLargeError, "the frame is 100000 x 100000"),
        (b"1e9", b"4", CorruptFrameError, "impossible frame size of 1000000000 x 4"),
        (b"-4", b"4", CorruptFrameError, "impossible frame size of -4 x 4"),
        (b"4", b"0", CorruptFrameError, "impossible frame size of 4 x 0"),
    ],
)
@pytest.mark.parametrize("read", sorted(READS))
def test_smv_sizes_are_checked_before_the_pixels_are_read(
    tmp_path: Path, size1: bytes, size2: bytes, error: type, message: str, read: str
) -> None:
    path = tmp_path / "declared_0001.img"
    path.write_bytes((SMV_HEADER % (size1, size2)).ljust(512) + bytes(32))
    with pytest.raises(error, match=rf"declared_0001\.img: .*{message}"):
        READS[read](path, DEFAULT_LIMITS)


def with_tiff_size(content: bytes, width: int, height: int) -> bytes:
    """The TIFF with ImageWidth and ImageLength rewritten as LONG values."""
    order = "<" if content[:2] == b"II" else ">"
    patched = bytearray(content)
    (ifd,) = struct.unpack_from(order + "I", content, 4)
    (count,) = struct.unpack_from(order + "H", content, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        (tag,) = struct.unpack_from(order + "H", content, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into(order + "HHII", patched, entry, tag, 4, 1, value)
    return bytes(patched)


@pytest.mark.parametrize(
    ("width", "height", "error", "message"),
    [
        (100_000, 100_000, FrameTooLargeError, "the frame is 100000 x 100000"),
        (0, 32, CorruptFrameError, "impossible frame size of 0 x 32"),
        (4_000_000_000, 1, CorruptFrameError, "impossible frame size of 4000000000 x 1"),
    ],
)
@pytest.mark.parametrize("read", sorted(READS))
def test_tiff_sizes_are_checked_before_the_pixels_are_read(
    tmp_path: Path, width: int, height: int, error: type, message: str, read: str
) -> None:
    source = write_monitor_tiff(tmp_path / "source.tif", 64, 32, 16)
    path = tmp_path / "declared.tif"
    path.write_bytes(with_tiff_size(source.read_bytes(), width, height))
    with pytest.raises(error, match=rf"declared\.tif: .*{message}"):
        READS[read](path, DEFAULT_LIMITS)


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("read", sorted(READS))
def test_marccd_size_is_checked_before_the_pixels_are_read(
    tmp_path: Path, byte_order: str, read: str
) -> None:
    source = write_marccd(tmp_path / "source.mccd", size_px=64, byte_order=byte_order)
    content = bytearray(with_tiff_size(source.read_bytes(), 20_000, 20_000))
    struct.pack_into(byte_order + "II", content, 1104, 20_000, 20_000)  # nfast, nslow agree
    path = tmp_path / "declared.mccd"
    path.write_bytes(bytes(content))
    assert read_meta(path, limits=LimitSettings(max_frame_pixels=1 << 30)).format_name == "marccd"
    with pytest.raises(FrameTooLargeError, match=r"declared\.mccd: the frame is 20000 x 20000"):
        READS[read](path, DEFAULT_LIMITS)


def write_stack(path: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> Path:
    """An Eiger-style data file whose chunks are never written (so it stays tiny)."""
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("/entry/data/data", shape=shape, dtype=np.uint32, chunks=chunks)
        dataset.attrs["image_nr_low"] = np.int32(1)
        dataset.attrs["image_nr_high"] = np.int32(shape[0])
    return path


@pytest.mark.parametrize("read", sorted(READS))
def test_eiger_frames_beyond_the_pixel_limit_are_refused(tmp_path: Path, read: str) -> None:
    path = write_stack(tmp_path / "huge_data_000001.h5", (2, 20_000, 20_000), (1, 1000, 1000))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(FrameTooLargeError, match=r"huge_data_000001\.h5: the frame is 20000 x"):
        READS[read](path, DEFAULT_LIMITS)


@pytest.mark.parametrize("read", sorted(READS))
def test_eiger_chunks_beyond_the_decompression_limit_are_refused(tmp_path: Path, read: str) -> None:
    """Eight 300 × 300 frames per chunk: 2.9 MB decoded at once, over a 1 MiB limit."""
    path = write_stack(tmp_path / "deep_data_000001.h5", (8, 300, 300), (8, 300, 300))
    limits = LimitSettings(max_decompressed_bytes=1 << 20)
    with pytest.raises(
        FrameTooLargeError,
        match=r"deep_data_000001\.h5: /entry/data/data is stored in chunks of 2880000 bytes",
    ):
        READS[read](path, limits)
    READS[read](path, DEFAULT_LIMITS)


def test_eiger_limits_hold_for_a_layout_already_cached(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "cached_data_000001.h5", (1, 300, 300), (1, 300, 300))
    assert read_meta(path).width_px == 300  # layout cached under the default limits
    with pytest.raises(FrameTooLargeError, match=r"cached_data_000001\.h5: the frame is 300"):
        open_frame(path, 1, limits=SMALL)
