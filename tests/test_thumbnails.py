"""Batch thumbnails: every frame, resumable, failures listed, data files not double-counted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import simplejpeg

from imageserver.render import Look
from imageserver.sampledata.dataset import EIGER16M_STEM, PILATUS_CBF
from imageserver.thumbnails import make_thumbnails


@pytest.fixture
def inputs(sample_dir: Path, tmp_path: Path) -> Path:
    """A directory with one Eiger series (master + data files), one CBF and one broken file."""
    directory = tmp_path / "in"
    directory.mkdir()
    for path in sample_dir.glob(f"{EIGER16M_STEM}_*.h5"):
        shutil.copy2(path, directory / path.name)
    shutil.copy2(sample_dir / PILATUS_CBF, directory / PILATUS_CBF)
    return directory


def test_every_frame_once_then_resume(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "thumbs"
    report = make_thumbnails(
        [inputs], out_dir=out, size_px=64, look=Look(), jobs=2, show_progress=False
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"{EIGER16M_STEM}_000001.jpg",
        f"{EIGER16M_STEM}_000002.jpg",
        "pilatus6m_0001.jpg",
    ]
    assert (report.written, report.up_to_date, report.failures) == (3, 0, [])
    assert simplejpeg.decode_jpeg((out / names[0]).read_bytes()).shape[1] == 64

    again = make_thumbnails([inputs], out_dir=out, size_px=64, jobs=2, show_progress=False)
    assert (again.written, again.up_to_date) == (0, 3)

    cbf = inputs / PILATUS_CBF
    newer = (out / "pilatus6m_0001.jpg").stat().st_mtime_ns + 10**9
    os.utime(cbf, ns=(newer, newer))
    third = make_thumbnails([inputs], out_dir=out, size_px=64, jobs=1, show_progress=False)
    assert (third.written, third.up_to_date) == (1, 2)


def test_failures_are_listed_and_the_rest_is_done(inputs: Path, tmp_path: Path) -> None:
    broken = inputs / "broken_0001.cbf"
    broken.write_bytes((inputs / PILATUS_CBF).read_bytes()[:5000])
    missing = tmp_path / "missing.cbf"
    out = tmp_path / "thumbs"
    report = make_thumbnails(
        [inputs, missing], out_dir=out, size_px=32, jobs=2, show_progress=False
    )
    assert report.written == 3
    where = [w for w, _ in report.failures]
    assert any("broken_0001.cbf" in w for w in where)
    assert any("missing.cbf" in w for w in where)
    assert "FAILED" in report.summary()
    assert not list(out.glob("broken*"))
    assert not list(out.glob(".*part"))
