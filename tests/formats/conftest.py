"""Eiger fixtures (small generated series written once, readers with private caches) and a
directory an unprivileged child may enter."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageserver.formats.eiger import EigerReader
from imageserver.formats.handles import HandleCache, LayoutCache
from imageserver.sampledata.eiger import write_eiger_series
from imageserver.sampledata.pattern import Geometry, centred_geometry

EIGER_GEOMETRY = centred_geometry(1100, 600, 75e-6, distance_m=0.25)
"""One whole Eiger2 module plus the start of its neighbours, so both kinds of gap cross it."""

EIGER_FRAMES = 5
EIGER_FRAMES_PER_FILE = 2


@pytest.fixture(scope="session")
def eiger_geometry() -> Geometry:
    return EIGER_GEOMETRY


@pytest.fixture(scope="session")
def eiger_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Master of a 32-bit series of 5 frames in three data files (1–2, 3–4, 5). Read only."""
    directory = tmp_path_factory.mktemp("eiger32")
    return write_eiger_series(
        directory,
        "series",
        geometry=EIGER_GEOMETRY,
        n_frames=EIGER_FRAMES,
        frames_per_file=EIGER_FRAMES_PER_FILE,
    )


@pytest.fixture(scope="session")
def eiger_series16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Master of a 16-bit series of 2 frames in two data files. Read only."""
    directory = tmp_path_factory.mktemp("eiger16")
    return write_eiger_series(
        directory, "series16", geometry=EIGER_GEOMETRY, n_frames=2, bit_depth=16
    )


@pytest.fixture
def eiger_copy(eiger_series: Path, tmp_path: Path) -> Path:
    """A private copy of ``eiger_series`` for tests that damage or rewrite files."""
    for source in eiger_series.parent.iterdir():
        shutil.copy2(source, tmp_path / source.name)
    return tmp_path / eiger_series.name


@pytest.fixture
def eiger_reader() -> EigerReader:
    """A reader with its own caches, so no test sees another test's handles or layouts."""
    return EigerReader(HandleCache(), LayoutCache())


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A fresh directory anyone may enter (pytest's are root-only), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="formats-access-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)
