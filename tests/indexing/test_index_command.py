"""`imageserver index`: progress on stderr, the result on stdout, the exit code from the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from imageserver.cli import main

FAKE = """\
import json, os, sys
args = sys.argv[1:]
os.write(int(args[args.index("--progress-fd") + 1]), b"finding spots\\n")
files = [arg for arg in args if arg.endswith(".cbf")]
result = {"files": files, "unit_cell": {"a": 5.42}} if len(files) > 1 else (
    {"error": {"code": "too_few_spots", "message": "only 7 strong spots were found"}})
os.write(int(args[args.index("--json-fd") + 1]), json.dumps(result).encode())
"""


@pytest.fixture
def run_of_frames(tmp_path: Path) -> Path:
    for number in range(1, 4):
        (tmp_path / f"x_{number:05d}.cbf").write_bytes(b"###CBF")
    return tmp_path / "x_00001.cbf"


def index(argv: list[str], tmp_path: Path) -> int:
    script = tmp_path / "fake_rapd.py"
    script.write_text(FAKE)
    return main(["index", *argv, "--command", f"{sys.executable} {script}"])


def test_frames_of_a_run_become_its_files(
    run_of_frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert index([str(run_of_frames), "--frames", "2-3"], tmp_path) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["files"] == [
        str(tmp_path / "x_00002.cbf"),
        str(tmp_path / "x_00003.cbf"),
    ]
    assert "] finding spots" in captured.err


def test_an_error_result_exits_1(
    run_of_frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert index([str(run_of_frames)], tmp_path) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "too_few_spots"


def test_frames_beyond_the_run_are_refused_before_any_work(
    run_of_frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert index([str(run_of_frames), "--frames", "1-5"], tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2 frame files of the run are missing: x_00004.cbf, x_00005.cbf" in captured.err
