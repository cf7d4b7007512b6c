"""Fixtures shared by the whole suite: a small sample dataset written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.sampledata.dataset import write_sample_data

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every sample format at reduced detector size, 2 frames per Eiger series."""
    directory = tmp_path_factory.mktemp("sample-data")
    write_sample_data(directory, n_frames=2, full_size=False)
    return directory


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real detector files not found at {SHARED_DATA}")
    return SHARED_DATA
