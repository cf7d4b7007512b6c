"""A directory as the user thinks of it: subdirectories and datasets, not files.

A beamline directory holds thousands of files that are a few datasets: an Eiger series is a
master and its data files, a Pilatus or CCD sweep a run of numbered single-frame files. This
turns names and `stat` results into those datasets (docs/http-api.md, ``list``), reading
nothing but Eiger masters' metadata (for their frame numbers). It runs in the user's worker,
so the file system decides what the user may see.

- ``name_master.h5`` is one dataset; ``*_data_*.h5`` files are never listed on their own.
- ``name_00001.cbf``, ``name_00002.cbf``, … (any frame extension, optionally gz/bz2/xz
  wrapped) is one run: its ``template`` is the path with the number's digits as ``#``.
- Any other frame file is a dataset of one frame; anything else (and hidden entries, and
  names that are not UTF-8, which no request could name) is left out.

At most ``limits.max_list_entries`` directory entries are read; a listing cut short says
``truncated``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import ImageServerError
from imageserver.formats import read_meta
from imageserver.formats.boundary import translated

FRAME_EXTENSIONS = ("cbf", "tif", "tiff", "mccd", "img", "smv")
"""Single-frame file types, by extension (case-insensitive)."""
WRAPPERS = ("gz", "bz2", "xz")
MASTER_SUFFIX = "_master.h5"

_EXTENSION = rf"\.(?:{'|'.join(FRAME_EXTENSIONS)})(?:\.(?:{'|'.join(WRAPPERS)}))?"
_FRAME_FILE = re.compile(rf"{_EXTENSION}$", re.IGNORECASE)
_NUMBERED = re.compile(
    rf"^(?P<prefix>.*?)(?P<digits>\d+)(?P<suffix>{_EXTENSION})$", re.IGNORECASE | re.DOTALL
)
_DATA_FILE = re.compile(r"^(?P<stem>.*)_data_\d+\.h5$", re.DOTALL)


@dataclass(frozen=True)
class Dataset:
    """One entry of a listing (the JSON fields of docs/http-api.md)."""

    name: str
    path: str
    kind: str
    """"eiger" (a master), "run" (numbered single-frame files) or "file" (one frame file)."""
    first_frame: int | None
    last_frame: int | None
    frames: int | None
    template: str | None
    mtime: float
    """Newest modification time of the dataset's files, in seconds since the epoch."""
    newest_frame: int | None = field(default=None, compare=False)
    """The frame of the most recently written file (`latest`)."""
    error: str | None = None
    """Why a master's frames are unknown (they are null then); the rest of the listing stands."""

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames": self.frames,
            "template": self.template,
            "mtime": self.mtime,
        }
        if self.error is not None:
            entry["error"] = self.error
        return entry


@dataclass(frozen=True)
class Listing:
    """A directory's subdirectories and datasets, each sorted by name."""

    dir: str
    dirs: tuple[str, ...]
    datasets: tuple[Dataset, ...]
    truncated: bool

    @property
    def parent(self) -> str | None:
        parent = os.path.dirname(self.dir)
        return None if parent == self.dir else parent

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "parent": self.parent,
            "dirs": list(self.dirs),
            "datasets": [dataset.to_json() for dataset in self.datasets],
            "truncated": self.truncated,
        }


def list_datasets(directory: str | Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> Listing:
    """The listing of ``directory``; FileMissingError / FileAccessError as for a file."""
    absolute = os.path.abspath(directory)
    files, dirs, truncated = read_entries(absolute, limits.max_list_entries)
    datasets = group_datasets(absolute, files, limits)
    datasets.sort(key=lambda dataset: dataset.name)
    return Listing(absolute, tuple(sorted(dirs)), tuple(datasets), truncated)


def latest_dataset(
    directory: str | Path, *, limits: LimitSettings = DEFAULT_LIMITS
) -> tuple[Dataset | None, int | None]:
    """The dataset written last in ``directory`` and its newest frame (None, None if none)."""
    return newest_dataset(list_datasets(directory, limits=limits).datasets)


def newest_dataset(datasets: Iterable[Dataset]) -> tuple[Dataset | None, int | None]:
    """The dataset written last (newest mtime, then name) and its newest frame."""
    newest = max(datasets, key=lambda dataset: (dataset.mtime, dataset.name), default=None)
    return newest, None if newest is None else newest.newest_frame


def group_datasets(
    directory: str, files: dict[str, os.stat_result], limits: LimitSettings = DEFAULT_LIMITS
) -> list[Dataset]:
    """The datasets these regular files of ``directory`` (name → stat) make, unsorted."""
    return [*_eiger_series(directory, files, limits), *_frame_files(directory, files)]


def dataset_group(name: str) -> tuple[str, ...] | None:
    """Which dataset a file name belongs to, as a key shared by all its files: an Eiger
    series' master and data files, a run's numbered files, a single frame file; None for a
    name no listing shows (hidden, not a frame file)."""
    if name.startswith(".") or not _is_utf8(name):
        return None
    if name.endswith(MASTER_SUFFIX):
        return ("eiger", name[: -len(MASTER_SUFFIX)])
    data = _DATA_FILE.match(name)
    if data:
        return ("eiger", data["stem"])
    if not _FRAME_FILE.search(name):
        return None
    numbered = _NUMBERED.match(name)
    if numbered is None:
        return ("file", name)
    return ("run", numbered["prefix"], str(len(numbered["digits"])), numbered["suffix"])


# -- reading the directory ---------------------------------------------------------------------


def read_entries(
    directory: str, max_entries: int
) -> tuple[dict[str, os.stat_result], list[str], bool]:
    """Regular files (with their stat) and subdirectories, symbolic links followed; hidden
    entries, names that are not UTF-8 and links to nothing left out."""
    files: dict[str, os.stat_result] = {}
    dirs: list[str] = []
    with translated(directory), os.scandir(directory) as entries:
        for count, entry in enumerate(entries):
            if count == max_entries:
                return files, dirs, True
            name = entry.name
            if name.startswith(".") or not _is_utf8(name):
                continue
            try:
                info = entry.stat()
            except OSError:  # a dangling link, or a file removed since the scan
                continue
            if stat.S_ISDIR(info.st_mode):
                dirs.append(name)
            elif stat.S_ISREG(info.st_mode):
                files[name] = info
    return files, dirs, False


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back as lone surrogates
        return False
    return True


# -- grouping files into datasets --------------------------------------------------------------


def _eiger_series(
    directory: str, files: dict[str, os.stat_result], limits: LimitSettings
) -> list[Dataset]:
    """One dataset per master, its frames from its metadata, its mtime its newest file's."""
    newest_data: dict[str, float] = {}
    for name, info in files.items():
        match = _DATA_FILE.match(name)
        if match:
            stem = match["stem"]
            newest_data[stem] = max(newest_data.get(stem, info.st_mtime), info.st_mtime)
    datasets = []
    for name, info in files.items():
        if not name.endswith(MASTER_SUFFIX):
            continue
        path = os.path.join(directory, name)
        mtime = max(info.st_mtime, newest_data.get(name[: -len(MASTER_SUFFIX)], info.st_mtime))
        try:
            meta = read_meta(Path(path), limits=limits)
        except ImageServerError as exc:
            datasets.append(
                Dataset(name, path, "eiger", None, None, None, None, mtime, error=str(exc))
            )
            continue
        first, last = meta.first_frame, meta.last_frame
        datasets.append(
            Dataset(
                name, path, "eiger", first, last, last - first + 1, None, mtime, newest_frame=last
            )
        )
    return datasets


def _frame_files(directory: str, files: dict[str, os.stat_result]) -> list[Dataset]:
    """Runs of numbered frame files, and single frame files."""
    runs: dict[tuple[str, int, str], dict[int, tuple[str, os.stat_result]]] = {}
    datasets = []
    for name, info in files.items():
        if not _FRAME_FILE.search(name):
            continue
        match = _NUMBERED.match(name)
        if match is None:
            path = os.path.join(directory, name)
            single = Dataset(name, path, "file", 1, 1, 1, None, info.st_mtime, newest_frame=1)
            datasets.append(single)
            continue
        key = (match["prefix"], len(match["digits"]), match["suffix"])
        runs.setdefault(key, {})[int(match["digits"])] = (name, info)
    for (prefix, width, suffix), members in runs.items():
        datasets.append(_run(directory, prefix + "#" * width + suffix, members))
    return datasets


def _run(directory: str, name: str, members: dict[int, tuple[str, os.stat_result]]) -> Dataset:
    first, last = min(members), max(members)
    newest = max(members, key=lambda number: (members[number][1].st_mtime_ns, number))
    return Dataset(
        name=name,
        path=os.path.join(directory, members[first][0]),
        kind="run",
        first_frame=first,
        last_frame=last,
        frames=len(members),
        template=os.path.join(directory, name),
        mtime=members[newest][1].st_mtime,
        newest_frame=newest,
    )
