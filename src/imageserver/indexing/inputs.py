"""What the user names (files and ``--frames A-B``) turned into an `IndexingInput`.

An HDF5 master and a frame range become RAPD's ``--hdf5_image_range``; one numbered
single-image file and a frame range become the run's files with those numbers (DIALS reads a
run of single-image files as one sweep); files named one by one are indexed as given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from imageserver.errors import IndexingInputError
from imageserver.indexing.contract import IndexingInput

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
LSCAT_EIGER2_VERSION = "1.8.0"
"""The DCU software version that marks LS-CAT's Eiger2 16M (legacy server, `index` step 1)."""
LSCAT_EIGER2_DETECTOR = "lscat_dectris_eiger2_16m"
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<digits>\d+)(?P<suffix>\.[A-Za-z][\w.]*)$")


def parse_frames(text: str) -> tuple[int, int]:
    """``A-B`` (or ``A``) as 1-based first and last frame."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if match is None:
        raise IndexingInputError(f"frames are A-B, not {text!r}")
    first = int(match[1])
    last = int(match[2] or first)
    if not 1 <= first <= last:
        raise IndexingInputError(f"bad frame range {text!r}")
    return first, last


def is_hdf5(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return stream.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError as exc:
        raise IndexingInputError(f"{path}: {exc.strerror or exc}") from None


def build_input(
    files: Sequence[Path], frames: tuple[int, int] | None = None, detector: str | None = None
) -> IndexingInput:
    """Absolute paths (the job runs elsewhere), frames resolved; raises IndexingInputError."""
    paths = tuple(path.absolute() for path in files)
    if not paths:
        raise IndexingInputError("no image files to index")
    for path in paths:
        if not path.is_file():
            raise IndexingInputError(f"{path}: no such file")
    if frames is None:
        return IndexingInput(paths, None, detector)
    if len(paths) != 1:
        raise IndexingInputError("give one file (a master or the run's first file) with frames")
    if is_hdf5(paths[0]):
        return IndexingInput(paths, frames, detector)
    return IndexingInput(run_files(paths[0], frames), None, detector)


def rapd_detector(path: Path) -> str | None:
    """RAPD's ``--detector`` for ``path``, as the legacy server chose it: LS-CAT's Eiger2 16M
    (a master whose DCU software version is 1.8.0) needs it named, anything else does not."""
    if not is_hdf5(path):
        return None
    import h5py  # only for masters

    try:
        with h5py.File(path, "r") as master:
            version = master.get("/entry/instrument/detector/detectorSpecific/software_version")
            value = version[()] if isinstance(version, h5py.Dataset) else None
    except OSError:
        return None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return LSCAT_EIGER2_DETECTOR if value == LSCAT_EIGER2_VERSION else None


def run_files(member: Path, frames: tuple[int, int]) -> tuple[Path, ...]:
    """The files numbered ``frames`` of the run ``member`` belongs to (same prefix and width)."""
    match = _NUMBERED.match(member.name)
    if match is None:
        raise IndexingInputError(f"{member.name}: not a numbered frame file, frames cannot apply")
    width = len(match["digits"])
    names = [f"{match['prefix']}{n:0{width}d}{match['suffix']}" for n in range(*_span(frames))]
    paths = tuple(member.parent / name for name in names)
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
        raise IndexingInputError(f"{len(missing)} frame files of the run are missing: {shown}")
    return paths


def _span(frames: tuple[int, int]) -> tuple[int, int]:
    return frames[0], frames[1] + 1
