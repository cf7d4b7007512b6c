"""Format detection: every sample file is claimed by exactly one reader, by content."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
import shutil
from pathlib import Path

import fabio.cbfimage
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imageserver.errors import FileMissingError, UnknownFormatError
from imageserver.formats import READERS, claimants, detect_reader, open_frame, read_meta
from imageserver.formats.compressed import read_head
from imageserver.sampledata.marccd import write_marccd, write_monitor_tiff

PILATUS_HEADER = "# Detector: PILATUS 100K, S/N 1-0001\r\n# Pixel_size 172e-6 m x 172e-6 m"
SMV = b"{\nHEADER_BYTES=  512;\nDIM=2;\nTYPE=unsigned_short;\nSIZE1=4;\nSIZE2=2;\n}".ljust(512)


def claimed_by(path: Path) -> list[str]:
    return [reader.format_name for reader in claimants(read_head(path))]


@pytest.fixture(scope="module")
def extra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small generated files: wrapped CBFs, misnamed files and things that are no image."""
    directory = tmp_path_factory.mktemp("detection")
    small_cbf = directory / "small.cbf"
    header = {"_array_data.header_convention": "PILATUS_1.2",
              "_array_data.header_contents": PILATUS_HEADER}  # fmt: skip
    data = np.arange(20 * 30, dtype=np.int32).reshape(20, 30) - 5
    fabio.cbfimage.CbfImage(data=data, header=header).write(str(small_cbf))
    content = small_cbf.read_bytes()
    (directory / "small.cbf.gz").write_bytes(gzip.compress(content))
    (directory / "small.cbf.xz").write_bytes(lzma.compress(content))
    (directory / "bz2_without_extension.cbf").write_bytes(bz2.compress(content))
    (directory / "cbf_named.tif").write_bytes(content)
    write_marccd(directory / "marccd.mccd", size_px=64)
    shutil.copy(write_marccd(directory / "be.mccd", size_px=64, byte_order=">"),
                directory / "marccd_named.tif")  # fmt: skip
    write_monitor_tiff(directory / "monitor16.tif", 40, 30, 16)
    (directory / "monitor_named.mccd").write_bytes((directory / "monitor16.tif").read_bytes())
    (directory / "monitor.tif.gz").write_bytes(
        gzip.compress((directory / "monitor16.tif").read_bytes())
    )
    (directory / "adsc_0001.img").write_bytes(SMV + bytes(16))
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(directory / "picture.cbf.png")
    (directory / "noise.cbf").write_bytes(random.Random(3).randbytes(5000))
    (directory / "empty.h5").write_bytes(b"")
    (directory / "empty.cbf.gz").write_bytes(gzip.compress(b""))
    (directory / "notes.txt").write_bytes(b"beamline log: frame 1 looked fine\n")
    return directory


EXPECTED_EXTRA = {
    "small.cbf": ["cbf"],
    "small.cbf.gz": ["cbf"],
    "small.cbf.xz": ["cbf"],
    "bz2_without_extension.cbf": ["cbf"],
    "cbf_named.tif": ["cbf"],
    "marccd.mccd": ["marccd"],
    "be.mccd": ["marccd"],
    "marccd_named.tif": ["marccd"],
    "monitor16.tif": ["tiff"],
    "monitor_named.mccd": ["tiff"],
    "monitor.tif.gz": ["tiff"],
    "adsc_0001.img": ["smv"],
    "picture.cbf.png": [],
    "noise.cbf": [],
    "empty.h5": [],
    "empty.cbf.gz": [],
    "notes.txt": [],
}


def test_generated_files_are_claimed_by_exactly_the_right_reader(extra_dir: Path) -> None:
    found = {path.name: claimed_by(path) for path in sorted(extra_dir.iterdir())}
    assert found == EXPECTED_EXTRA


def test_sample_dataset_files_are_claimed_once(sample_dir: Path) -> None:
    kinds = {".h5": "eiger", ".cbf": "cbf", ".bz2": "cbf", ".mccd": "marccd", ".tif": "tiff"}
    found = {path.name: claimed_by(path) for path in sorted(sample_dir.iterdir())}
    assert found == {name: [kinds[Path(name).suffix]] for name in found}
    assert {"eiger", "cbf", "marccd", "tiff"} <= {names[0] for names in found.values()}


def test_real_files_are_claimed_once(shared_data: Path) -> None:
    found = {
        str(path.relative_to(shared_data)): claimed_by(path)
        for path in sorted(shared_data.rglob("*"))
        if path.is_file() and path.name != "PROVENANCE.md"
    }
    cysteine = {name for name in found if name.startswith("l-cysteine/")}
    assert len(cysteine) == 15
    assert all(found[name] == ["cbf"] for name in cysteine)
    assert {name: claims for name, claims in found.items() if name not in cysteine} == {
        "eiger16m_therm_0001.cbf.gz": ["cbf"],
        "eiger2-stream/header.msgpack": [],
        "eiger2-stream/image000044.msgpack": [],
        "eiger9m_master.h5": ["eiger"],
        "pilatus6m_smargon_0001.cbf.gz": ["cbf"],
        "pilatus6m_thau_3_2_0001.cbf.bz2": ["cbf"],
    }


def test_detected_reader_reads_the_generated_files(extra_dir: Path) -> None:
    for name, expected in EXPECTED_EXTRA.items():
        if expected:
            assert read_meta(extra_dir / name).format_name == expected[0], name
    assert read_meta(extra_dir / "small.cbf.xz").width_px == 30


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("picture.cbf.png", r"picture\.cbf\.png: unknown format: it looks like a PNG image"),
        ("noise.cbf", r"noise\.cbf: unknown format: its first bytes are ([0-9a-f]{2} ){15}"),
        ("empty.h5", r"empty\.h5: unknown format: the file is empty$"),
        ("empty.cbf.gz", r"empty\.cbf\.gz: unknown format: the file is empty after gz"),
        ("notes.txt", r"notes\.txt: unknown format: its first bytes are 62 65 61 .*'beamline log"),
    ],
)
def test_unknown_format_says_what_the_file_looks_like(
    extra_dir: Path, name: str, message: str
) -> None:
    with pytest.raises(UnknownFormatError, match=message):
        detect_reader(extra_dir / name)


def test_missing_file_and_directory_through_the_public_calls(tmp_path: Path) -> None:
    with pytest.raises(FileMissingError, match=r"gone_0001\.cbf: file not found"):
        open_frame(tmp_path / "gone_0001.cbf", 1)
    with pytest.raises(FileMissingError, match=r"gone_master\.h5: file not found"):
        read_meta(tmp_path / "gone_master.h5")
    with pytest.raises(UnknownFormatError, match="is a directory, not an image file"):
        detect_reader(tmp_path)


def test_readers_are_listed_most_specific_first() -> None:
    names = [reader.format_name for reader in READERS]
    assert names == ["eiger", "marccd", "tiff", "cbf", "smv"]


MAGICS = [b"", b"\x89HDF\r\n\x1a\n", b"###CBF", b"II*\x00", b"MM\x00*", b"{\nHEADER_BYTES="]


@settings(max_examples=300, deadline=None)
@given(
    magic=st.sampled_from(MAGICS),
    body=st.binary(max_size=1400),
    suffix=st.sampled_from(["", ".cbf", ".mccd", ".tif", ".h5", ".img"]),
)
def test_sniff_never_raises_and_at_most_one_reader_claims(
    magic: bytes, body: bytes, suffix: str
) -> None:
    head = magic + body
    answers = [reader.sniff(head, suffix) for reader in READERS]
    assert all(isinstance(answer, bool) for answer in answers)
    assert sum(answers) <= 1
