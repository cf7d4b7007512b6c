"""The command line, called in-process and once through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import simplejpeg
from PIL import Image

from imageserver.cli import main
from imageserver.sampledata.dataset import EIGER16M_MASTER, PILATUS_CBF


def test_jpeg_writes_the_requested_view(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "view.jpg"
    argv = [
        "jpeg",
        str(sample_dir / EIGER16M_MASTER),
        "--frame",
        "2",
        "--size",
        "400",
        "--zoom",
        "2",
        "--segcol",
        "1",
        "--segrow",
        "0",
        "--contrast",
        "30",
        "--wval",
        "2",
        "--label",
        "frame",
        "--label-height",
        "16",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    image = simplejpeg.decode_jpeg(out.read_bytes())
    assert image.shape[1] == 400
    assert image.shape[0] > 16


def test_png_output_is_lossless_rgb(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "view.png"
    assert main(["jpeg", str(sample_dir / PILATUS_CBF), "--size", "128", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size[0] == 128


def test_meta_prints_legacy_json(sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["meta", str(sample_dir / EIGER16M_MASTER), "--frame", "2"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["frame"] == 2
    assert meta["last_frame"] == 2
    assert meta["software_version"] == "1.8.0"
    assert meta["image_depth"] == 4
    assert meta["wavelength"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jpeg", "{dir}/nope.cbf", "-o", "{tmp}/x.jpg"], "nope.cbf"),
        (["jpeg", "{master}", "--size", "20000", "-o", "{tmp}/x.jpg"], "10000"),
        (["jpeg", "{master}", "--zoom", "65", "-o", "{tmp}/x.jpg"], "64"),
        (["jpeg", "{master}", "--frame", "3", "-o", "{tmp}/x.jpg"], "frame 3"),
        (["meta", "{master}", "--frame", "9"], "frame 9"),
        (["jpeg", "{junk}", "-o", "{tmp}/x.jpg"], "unknown format"),
    ],
)
def test_bad_input_is_one_clear_error(
    sample_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a detector image" * 10)
    values = {
        "dir": str(sample_dir),
        "tmp": str(tmp_path),
        "master": str(sample_dir / EIGER16M_MASTER),
        "junk": str(junk),
    }
    assert main([arg.format(**values) for arg in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imageserver: error: ")
    assert message in err
    assert not (tmp_path / "x.jpg").exists()


def test_console_script_runs(sample_dir: Path, tmp_path: Path) -> None:
    script = shutil.which("imageserver") or str(Path(__file__).parents[1] / ".venv/bin/imageserver")
    done = subprocess.run(
        [script, "meta", str(sample_dir / PILATUS_CBF)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["x_pixels_in_detector"] == 2463


def test_the_daemons_load_no_imaging_code() -> None:
    """The broker and the root manager open no image: a frame reader or kernel in their
    memory would only widen what a bad input could reach, and cost ~170 MiB each."""
    probe = (
        "import sys, imageserver.daemons, imageserver.transports.broker, "
        "imageserver.service.server; "
        "print(sorted(m for m in ('numba', 'h5py', 'fabio', 'hdf5plugin', 'simplejpeg') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
