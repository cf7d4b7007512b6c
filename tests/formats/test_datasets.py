"""Directory listings as datasets, on real files in temporary directories."""

from __future__ import annotations

import bz2
import gzip
import os
import shutil
from pathlib import Path

import pytest
from forked import in_child, unprivileged

from imageserver.config import LimitSettings
from imageserver.errors import FileAccessError, FileMissingError
from imageserver.formats import read_meta
from imageserver.formats.datasets import latest_dataset, list_datasets
from imageserver.sampledata.eiger import write_eiger_series
from imageserver.sampledata.pattern import centred_geometry

SMALL_EIGER = centred_geometry(64, 48, 75e-6, distance_m=0.25)


def touch(path: Path, mtime: float, content: bytes = b"x") -> Path:
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


def by_name(directory: Path) -> dict[str, dict[str, object]]:
    return {d["name"]: d for d in list_datasets(directory).to_json()["datasets"]}


def test_a_run_with_a_gap_is_one_dataset_with_a_template(tmp_path: Path) -> None:
    for number in (1, 2, 3, 5):
        touch(tmp_path / f"lyso_1_{number:05d}.cbf", 1000.0 + number)
    listing = list_datasets(tmp_path).to_json()
    assert listing["dir"] == str(tmp_path) and listing["parent"] == str(tmp_path.parent)
    assert listing["dirs"] == [] and listing["truncated"] is False
    assert listing["datasets"] == [
        {
            "name": "lyso_1_#####.cbf",
            "path": str(tmp_path / "lyso_1_00001.cbf"),
            "kind": "run",
            "first_frame": 1,
            "last_frame": 5,
            "frames": 4,
            "template": str(tmp_path / "lyso_1_#####.cbf"),
            "mtime": 1005.0,
        }
    ]


def test_wrapped_runs_and_widths_are_separate_runs(tmp_path: Path) -> None:
    for number in (7, 8):
        touch(tmp_path / f"a_{number:04d}.cbf.gz", 10.0)
        touch(tmp_path / f"a_{number:04d}.cbf.bz2", 10.0)
        touch(tmp_path / f"a_{number:04d}.img.xz", 10.0)
        touch(tmp_path / f"a_{number:03d}.TIF", 10.0)
    datasets = by_name(tmp_path)
    assert set(datasets) == {"a_###.TIF", "a_####.cbf.bz2", "a_####.cbf.gz", "a_####.img.xz"}
    assert list(datasets) == sorted(datasets)
    gz = datasets["a_####.cbf.gz"]
    assert (gz["first_frame"], gz["last_frame"], gz["frames"]) == (7, 8, 2)
    assert gz["template"] == str(tmp_path / "a_####.cbf.gz")


def test_frame_n_of_a_run_is_its_template_with_n_zero_padded(tmp_path: Path) -> None:
    """The contract a client relies on, checked with real (generated) CBF files."""
    from imageserver.sampledata.cbf import write_pilatus_cbf

    for number in (1, 2):
        write_pilatus_cbf(tmp_path / f"x_{number:04d}.cbf", frame_index=number, compression="gz")
    run = by_name(tmp_path)["x_####.cbf.gz"]
    template = str(run["template"])
    for number in (1, 2):
        path = Path(template.replace("####", f"{number:04d}"))
        assert path.exists() and read_meta(path).width_px > 0


def test_single_files_other_files_hidden_and_dirs(tmp_path: Path) -> None:
    touch(tmp_path / "image.cbf", 5.0)
    touch(tmp_path / "scan.mccd.bz2", 6.0)
    touch(tmp_path / "notes.txt", 7.0)
    touch(tmp_path / "image_0001.jpg", 7.0)
    touch(tmp_path / "other.h5", 7.0)
    touch(tmp_path / ".hidden_0001.cbf", 7.0)
    (tmp_path / "b_sub").mkdir()
    (tmp_path / "a_sub").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "dangling_0001.cbf").symlink_to(tmp_path / "nowhere")
    listing = list_datasets(tmp_path).to_json()
    assert listing["dirs"] == ["a_sub", "b_sub"]
    names = [d["name"] for d in listing["datasets"]]
    assert names == ["image.cbf", "scan.mccd.bz2"]
    single = listing["datasets"][0]
    assert single["kind"] == "file" and single["template"] is None
    assert (single["first_frame"], single["last_frame"], single["frames"]) == (1, 1, 1)


def test_an_eiger_series_is_its_master_and_its_data_files_are_hidden(tmp_path: Path) -> None:
    master = write_eiger_series(
        tmp_path, "prot_1", geometry=SMALL_EIGER, n_frames=5, frames_per_file=2
    )
    data_files = sorted(tmp_path.glob("prot_1_data_*.h5"))
    assert len(data_files) == 3
    touch(tmp_path / "orphan_data_000001.h5", 1.0)
    for index, path in enumerate([master, *data_files]):
        os.utime(path, (100.0 + index, 100.0 + index))
    datasets = by_name(tmp_path)
    assert list(datasets) == ["prot_1_master.h5"]
    assert datasets["prot_1_master.h5"] == {
        "name": "prot_1_master.h5",
        "path": str(master),
        "kind": "eiger",
        "first_frame": 1,
        "last_frame": 5,
        "frames": 5,
        "template": None,
        "mtime": 103.0,  # the newest data file's
    }


def test_an_unreadable_master_is_listed_with_its_error(tmp_path: Path) -> None:
    touch(tmp_path / "broken_master.h5", 50.0, b"not an HDF5 file at all")
    touch(tmp_path / "fine_0001.cbf", 40.0)
    datasets = by_name(tmp_path)
    broken = datasets["broken_master.h5"]
    assert broken["kind"] == "eiger"
    assert broken["first_frame"] is None and broken["frames"] is None
    assert "broken_master.h5" in str(broken["error"])
    assert "error" not in datasets["fine_####.cbf"]


def test_a_real_master_without_its_data_file_still_lists(shared_data: Path, tmp_path: Path) -> None:
    shutil.copy(shared_data / "eiger9m_master.h5", tmp_path / "eiger9m_master.h5")
    entry = by_name(tmp_path)["eiger9m_master.h5"]
    assert entry["frames"] == 1 and "error" not in entry


def test_the_listing_stops_at_max_list_entries(tmp_path: Path) -> None:
    for number in range(1, 11):
        touch(tmp_path / f"r_{number:03d}.cbf", float(number))
    limits = LimitSettings(max_list_entries=4)
    listing = list_datasets(tmp_path, limits=limits)
    assert listing.truncated
    assert sum(d.frames or 0 for d in listing.datasets) == 4
    exact = list_datasets(tmp_path, limits=LimitSettings(max_list_entries=10))
    assert not exact.truncated and exact.datasets[0].frames == 10


def test_root_has_no_parent() -> None:
    assert list_datasets("/", limits=LimitSettings(max_list_entries=1)).to_json()["parent"] is None


def test_a_relative_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert list_datasets("sub/../sub").dir == str(tmp_path / "sub")


def test_latest_is_the_newest_dataset_and_its_newest_frame(tmp_path: Path) -> None:
    for number in (1, 2, 3):
        touch(tmp_path / f"old_{number:04d}.cbf", 100.0 + number)
    for number in (1, 2, 3):
        touch(tmp_path / f"new_{number:04d}.cbf", 200.0 - number)  # frame 1 written last
    touch(tmp_path / "single.tif", 150.0)
    dataset, frame = latest_dataset(tmp_path)
    assert dataset is not None and dataset.name == "new_####.cbf" and frame == 1
    touch(tmp_path / "single.tif", 300.0)
    dataset, frame = latest_dataset(tmp_path)
    assert dataset is not None and dataset.name == "single.tif" and frame == 1


def test_latest_of_an_eiger_series_counts_its_data_files(tmp_path: Path) -> None:
    master = write_eiger_series(tmp_path, "s", geometry=SMALL_EIGER, n_frames=3)
    for path in tmp_path.iterdir():
        os.utime(path, (10.0, 10.0))
    touch(tmp_path / "other_0001.cbf", 20.0)
    dataset, _ = latest_dataset(tmp_path)
    assert dataset is not None and dataset.name == "other_####.cbf"
    data_file = next(tmp_path.glob("s_data_*.h5"))
    os.utime(data_file, (30.0, 30.0))
    dataset, frame = latest_dataset(tmp_path)
    assert dataset is not None and dataset.path == str(master) and frame == 3


def test_latest_of_an_empty_directory(tmp_path: Path) -> None:
    assert latest_dataset(tmp_path) == (None, None)


def test_a_missing_directory_or_a_file_is_file_missing(tmp_path: Path) -> None:
    with pytest.raises(FileMissingError):
        list_datasets(tmp_path / "absent")
    touch(tmp_path / "plain.cbf", 1.0)
    with pytest.raises(FileMissingError):
        list_datasets(tmp_path / "plain.cbf")


def test_a_directory_without_read_permission_is_access_denied(open_dir: Path) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o311)  # enter, not read

    def code() -> str:
        try:
            list_datasets(closed)
        except (FileAccessError, FileMissingError) as exc:
            return exc.code
        return "listed"

    assert in_child(code, unprivileged()) == "permission_denied"


def test_wrapped_files_are_listed_by_name_without_being_read(tmp_path: Path) -> None:
    """Listing goes by name only: a wrapped file is listed without being decompressed."""
    touch(tmp_path / "w_0001.cbf.gz", 1.0, gzip.compress(b"junk"))
    touch(tmp_path / "w_0002.cbf.gz", 2.0, bz2.compress(b"junk"))  # content does not matter
    assert by_name(tmp_path)["w_####.cbf.gz"]["frames"] == 2
