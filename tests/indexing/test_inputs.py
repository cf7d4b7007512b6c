"""Files and frames as the user names them, turned into the job RAPD's contract describes."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from imageserver.indexing.inputs import (
    IndexingInputError,
    build_input,
    parse_frames,
    rapd_detector,
)


def test_parse_frames() -> None:
    assert parse_frames("1-15") == (1, 15)
    assert parse_frames(" 7 ") == (7, 7)
    for wrong in ("0-3", "5-2", "a-b", "1-"):
        with pytest.raises(IndexingInputError):
            parse_frames(wrong)


def write_master(path: Path, software_version: str) -> Path:
    with h5py.File(path, "w") as master:
        group = master.create_group("entry/instrument/detector/detectorSpecific")
        group["software_version"] = software_version.encode()
    return path


def test_a_master_keeps_its_frame_range(tmp_path: Path) -> None:
    master = write_master(tmp_path / "x_master.h5", "1.6.0")
    job = build_input([master], (3, 9))
    assert job.files == (master,) and job.image_range == (3, 9)


def test_files_without_frames_are_indexed_as_given(tmp_path: Path) -> None:
    names = [tmp_path / "a.mccd", tmp_path / "b.mccd"]
    for path in names:
        path.write_bytes(b"II*\x00")
    job = build_input(names)
    assert job.files == tuple(names) and job.image_range is None


def test_frames_with_several_files_are_refused(tmp_path: Path) -> None:
    names = [tmp_path / "x_00001.cbf", tmp_path / "x_00002.cbf"]
    for path in names:
        path.write_bytes(b"###CBF")
    with pytest.raises(IndexingInputError, match="give one file"):
        build_input(names, (1, 2))


def test_relative_names_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x_0009.cbf").write_bytes(b"###CBF")
    (tmp_path / "x_0010.cbf").write_bytes(b"###CBF")
    monkeypatch.chdir(tmp_path)
    job = build_input([Path("x_0009.cbf")], (9, 10))
    assert job.files == (tmp_path / "x_0009.cbf", tmp_path / "x_0010.cbf")


def test_rapd_detector_names_only_the_lscat_eiger2(tmp_path: Path) -> None:
    assert rapd_detector(write_master(tmp_path / "a_master.h5", "1.8.0")) == (
        "lscat_dectris_eiger2_16m"
    )
    assert rapd_detector(write_master(tmp_path / "b_master.h5", "1.6.0")) is None
    cbf = tmp_path / "c_00001.cbf"
    cbf.write_bytes(b"###CBF")
    assert rapd_detector(cbf) is None
