"""The edge of formats/: only the project's errors leave it, whatever the file or library does."""

from __future__ import annotations

import bz2
import errno
import gzip
import itertools
import logging
import lzma
import resource
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import fabio.cbfimage
import h5py
import numpy as np
import pytest
from forked import in_child
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imageserver.errors import (
    CorruptFrameError,
    FileAccessError,
    FileMissingError,
    ImageServerError,
    ResourceLimitError,
    SessionError,
)
from imageserver.formats import open_frame, read_meta
from imageserver.formats.boundary import translated
from imageserver.sampledata.marccd import write_marccd, write_monitor_tiff

PATH = Path("/data/esaf1/frame_0001.cbf")


# --- the translation itself (pure logic) -----------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected", "message"),
    [
        (ValueError("negative dimensions"), CorruptFrameError, "corrupt or unsupported content"),
        (KeyError("X-Binary-Size"), CorruptFrameError, "KeyError: 'X-Binary-Size'"),
        (IndexError("out of range"), CorruptFrameError, "IndexError"),
        (TypeError("Unknown string encoding"), CorruptFrameError, "TypeError"),
        (struct.error("unpack requires"), CorruptFrameError, "error: unpack requires"),
        (EOFError(), CorruptFrameError, r"\(EOFError\)"),
        (zlib.error("invalid distance"), CorruptFrameError, "invalid distance"),
        (lzma.LZMAError("corrupt input"), CorruptFrameError, "LZMAError"),
        (OverflowError("cannot convert float infinity"), CorruptFrameError, "OverflowError"),
        (OSError("Unable to open file (truncated file)"), CorruptFrameError, "cannot be read"),
        (OSError(errno.EIO, "Input/output error"), CorruptFrameError, "cannot be read"),
        (OSError(errno.EACCES, "Permission denied"), FileAccessError, "permission denied"),
        (PermissionError("denied"), FileAccessError, "permission denied"),
        (OSError(errno.ENOENT, "No such file"), FileMissingError, "file not found"),
        (FileNotFoundError("gone"), FileMissingError, "file not found"),
        (MemoryError(), ResourceLimitError, "^not enough memory to read /data/esaf1/frame_0001"),
        (AttributeError("a bug of ours?"), CorruptFrameError, "AttributeError"),
    ],
)
def test_foreign_exceptions_become_the_projects_keeping_the_original(
    raised: BaseException, expected: type[ImageServerError], message: str
) -> None:
    with pytest.raises(expected, match=message) as info, translated(PATH):
        raise raised
    assert info.value.__cause__ is raised
    if expected is not ResourceLimitError:
        assert str(info.value).startswith(f"{PATH}: ")


def test_the_projects_own_errors_and_interrupts_pass_unchanged() -> None:
    for raised in (CorruptFrameError("x: bad"), SessionError("expired"), KeyboardInterrupt()):
        with pytest.raises(type(raised)) as info, translated(PATH):
            raise raised
        assert info.value is raised


def test_unexpected_types_are_logged_with_their_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(CorruptFrameError), translated(PATH):
        raise AttributeError("'NoneType' object has no attribute 'find'")
    assert "unexpected AttributeError" in caplog.text
    assert caplog.records[-1].levelno == logging.WARNING and caplog.records[-1].exc_info

    caplog.clear()
    with pytest.raises(CorruptFrameError), translated(PATH):
        raise ValueError("the usual kind")
    assert caplog.text == ""


def test_long_foreign_messages_are_cut() -> None:
    with pytest.raises(CorruptFrameError) as info, translated(PATH):
        raise ValueError("x" * 10_000)
    assert len(str(info.value)) < 400


# --- a real allocation failure -----------------------------------------------------------------


def test_running_out_of_memory_is_a_resource_limit_naming_the_file(tmp_path: Path) -> None:
    """A gz TIFF declaring 64 Mi 32-bit pixels (256 MiB) read under a 64 MiB heap ceiling."""
    source = write_monitor_tiff(tmp_path / "source.tif", 64, 32, 32)
    header = bytearray(source.read_bytes()[:256])
    for entry in range(10, 10 + 12 * struct.unpack_from("<H", header, 8)[0], 12):
        tag = struct.unpack_from("<H", header, entry)[0]
        if tag in (256, 257, 278):  # width, length, rows per strip
            struct.pack_into("<HHII", header, entry, tag, 4, 1, 8192)
        if tag == 279:  # the one strip's byte count
            struct.pack_into("<HHII", header, entry, tag, 4, 1, 8192 * 8192 * 4)
    path = tmp_path / "big_0001.tif.gz"
    member = gzip.compress(bytes(8 << 20))
    with path.open("wb") as out:
        out.write(gzip.compress(bytes(header)))
        for _ in range(8192 * 8192 * 4 // (8 << 20)):
            out.write(member)

    def read_with_little_memory() -> str:
        heap = _data_segment_bytes()
        resource.setrlimit(resource.RLIMIT_DATA, (heap + (64 << 20), resource.RLIM_INFINITY))
        try:
            open_frame(path, 1)
        except ImageServerError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "read"

    assert in_child(read_with_little_memory, None) == (
        f"ResourceLimitError: not enough memory to read {path}"
    )


def _data_segment_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmData in /proc/self/status")


# --- damaged headers of every format: only the project's errors --------------------------------

_ODD_VALUES = [
    "-4", "99999999999999999999", "0", "1e999", "nan", "-0", "4.5", "1e9", "inf", "", "abc",
    "\x00", "65535", "4294967296", "9" * 5000, "²", "0x10",
]  # fmt: skip
"""Most harmful first: hypothesis tries the first choices of a list early and often."""
_CBF_FIELDS = [
    b"X-Binary-Size-Fastest-Dimension:", b"X-Binary-Size-Second-Dimension:", b"X-Binary-Size:",
    b"X-Binary-Number-of-Elements:", b"X-Binary-Element-Type:", b"conversions=",
    b"X-Binary-Element-Byte-Order:", b"# Pixel_size", b"# Count_cutoff", b"# Beam_xy",
    b"# Wavelength",
]  # fmt: skip
_SMV_FIELDS = [
    b"SIZE1=", b"SIZE2=", b"HEADER_BYTES=", b"SATURATED_VALUE=", b"TYPE=", b"BYTE_ORDER=",
    b"PIXEL_SIZE=", b"DISTANCE=", b"WAVELENGTH=", b"BEAM_CENTER_X=",
]  # fmt: skip
_SMV_HEADER = (
    b"{\nHEADER_BYTES=  512;\nDIM=2;\nBYTE_ORDER=big_endian;\nTYPE=unsigned_short;\nSIZE1=48;\n"
    b"SIZE2=32;\nPIXEL_SIZE=0.1024;\nDISTANCE=250.00;\nWAVELENGTH=0.97949;\nBEAM_CENTER_X=2.56;\n"
    b"BEAM_CENTER_Y=1.536;\nSATURATED_VALUE=65535;\n}\f"
)
_NAMES = itertools.count()


class Sample:
    """A valid file of one format, the part of it that is header, and its header fields."""

    def __init__(
        self, content: bytes, suffix: str, header_bytes: int, fields: list[bytes] | None = None
    ) -> None:
        self.content, self.suffix = content, suffix
        self.header_bytes = min(header_bytes, len(content))
        self.fields = fields or []


@pytest.fixture(scope="module")
def samples(
    tmp_path_factory: pytest.TempPathFactory, eiger_series: Path
) -> dict[str, tuple[Sample, Path]]:
    """Each format's sample and the directory damaged copies go to (with Eiger's data files)."""
    directory = tmp_path_factory.mktemp("damaged")
    cbf = directory / "source.cbf"
    header = {
        "_array_data.header_convention": "PILATUS_1.2",
        "_array_data.header_contents": "# Detector: PILATUS 100K\r\n# Pixel_size 172e-6 m x"
        " 172e-6 m\r\n# Count_cutoff 1000 counts\r\n# Beam_xy (15.0, 10.0) pixels\r\n"
        "# Wavelength 1.0 A",
    }
    data = np.arange(20 * 30, dtype=np.int32).reshape(20, 30) - 5
    fabio.cbfimage.CbfImage(data=data, header=header).write(str(cbf))
    cbf_content = cbf.read_bytes()
    tiff = write_monitor_tiff(directory / "source.tif", 64, 32, 16).read_bytes()
    mccd = write_marccd(directory / "source.mccd", size_px=64).read_bytes()
    for data_file in eiger_series.parent.glob("*_data_*.h5"):
        shutil.copy(data_file, directory / data_file.name)
    found = {
        "cbf": Sample(cbf_content, ".cbf", cbf_content.index(b"\x0c\x1a\x04\xd5") + 8, _CBF_FIELDS),
        "smv": Sample(_SMV_HEADER.ljust(512) + bytes(48 * 32 * 2), ".img", 512, _SMV_FIELDS),
        "tiff": Sample(tiff, ".tif", 256),
        "marccd": Sample(mccd, ".mccd", 4096),
        "eiger": Sample(eiger_series.read_bytes(), "_master.h5", eiger_series.stat().st_size),
    }
    return {name: (sample, directory) for name, sample in found.items()}


@st.composite
def damaged(draw: st.DrawFn, sample: Sample) -> bytes:
    """The sample cut short, with header bytes overwritten, or with a header value replaced."""
    content = bytearray(sample.content)
    how = draw(st.sampled_from(["value", "cut", "bytes"] if sample.fields else ["cut", "bytes"]))
    if how == "cut":
        return bytes(content[: draw(st.integers(0, len(content) - 1))])
    if how == "bytes":
        for _ in range(draw(st.integers(1, 8))):
            content[draw(st.integers(0, sample.header_bytes - 1))] = draw(st.integers(0, 255))
        return bytes(content)
    field = draw(st.sampled_from(sample.fields))
    start = content.index(field) + len(field)
    end = min(end for end in (content.find(b";", start), content.find(b"\r", start)) if end >= 0)
    value = draw(st.sampled_from(_ODD_VALUES)).encode("latin-1")
    return bytes(content[:start] + b" " + value + content[end:])


READS: dict[str, Callable[[Path], object]] = {
    "read_meta": read_meta,
    "open_frame": lambda path: open_frame(path, 1),
}


@pytest.mark.parametrize("kind", ["cbf", "smv", "tiff", "marccd", "eiger"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_damaged_files_raise_only_the_projects_errors_naming_the_file(
    samples: dict[str, tuple[Sample, Path]], kind: str, data: st.DataObject
) -> None:
    sample, directory = samples[kind]
    path = directory / f"d{next(_NAMES)}{sample.suffix}"
    path.write_bytes(data.draw(damaged(sample), label="content"))
    for name, read in READS.items():
        try:
            read(path)
        except ImageServerError as exc:
            assert path.name in str(exc), (name, str(exc))
        except BaseException as exc:  # what this test is for: nothing else may come out
            pytest.fail(f"{name} raised {type(exc).__name__}: {exc}")


def test_eiger_string_encodings_h5py_cannot_read_are_corrupt(tmp_path: Path) -> None:
    """h5py raises TypeError for a string dataset of an unknown character set."""
    path = tmp_path / "odd_master.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.zeros((1, 4, 4), np.uint16)
        f["/entry/instrument/detector/description"] = np.bytes_(b"EIGER")
    _set_string_cset(path, b"EIGER", 2)  # H5T_CSET: 0 ascii, 1 utf-8, 2 reserved
    for read in READS.values():
        with pytest.raises(CorruptFrameError, match=r"odd_master\.h5: "):
            read(path)


def _set_string_cset(path: Path, text: bytes, cset: int) -> None:
    """Rewrite the character set in the datatype message of the fixed string holding ``text``."""
    content = bytearray(path.read_bytes())
    # A fixed-length string datatype message: class 3 in the low nibble, version 1 high;
    # its first property byte holds padding (low nibble) and cset (high nibble).
    size = struct.pack("<I", len(text))
    for at in range(len(content) - 8):
        if content[at] == 0x13 and content[at + 4 : at + 8] == size:
            content[at + 1] = (content[at + 1] & 0x0F) | (cset << 4)
            path.write_bytes(bytes(content))
            return
    raise AssertionError("no string datatype message found")


def test_compressed_wrappers_of_damaged_files_too(tmp_path: Path) -> None:
    header = _SMV_HEADER.replace(b"SIZE1=48;", b"SIZE1=-4;").ljust(512) + bytes(48 * 32 * 2)
    for kind, compress in (("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)):
        path = tmp_path / f"negative_0001.img.{kind}"
        path.write_bytes(compress(header))
        for read in READS.values():
            with pytest.raises(CorruptFrameError, match=rf"negative_0001\.img\.{kind}: .*-4 x 32"):
                read(path)
