"""The DIALS pipeline's failures, with stand-in DIALS programs (shell scripts) on its PATH."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from process_checks import is_gone

from imageserver.errors import IndexingError
from imageserver.indexing.contract import IndexingInput
from imageserver.indexing.pipeline import (
    DIALS_PATH_VARIABLE,
    dials_complaint,
    dials_environment,
    run_pipeline,
)
from imageserver.indexing.runner import minimal_environment, run_indexing

WORKING = {
    "dials.import": "touch imported.expt",
    "dials.find_spots": 'echo "Saved 54 reflections to strong.refl"; touch strong.refl',
    "dials.index": "touch indexed.expt indexed.refl",
    "dials.refine_bravais_settings": "touch bravais_summary.json",
}


def fake_dials(tmp_path: Path, **programs: str) -> dict[str, str]:
    """A bin directory of shell scripts named like DIALS's programs; DIALS's environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        WORKING | {key.replace("_", ".", 1): value for key, value in programs.items()}
    ).items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/bin:/usr/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}


@pytest.fixture
def job(tmp_path: Path) -> IndexingInput:
    frame = tmp_path / "x_00001.cbf"
    frame.write_bytes(b"###CBF")
    return IndexingInput((frame,))


def failure(
    job: IndexingInput, workdir: Path, environment: dict[str, str], timeout_s: float = 600.0
) -> IndexingError:
    """The error ``run_pipeline`` raises (it must raise one)."""
    with pytest.raises(IndexingError) as raised:
        run_pipeline(job, print, workdir=workdir, environment=environment, timeout_s=timeout_s)
    return raised.value


def test_no_dials_on_path_is_dials_missing(job: IndexingInput, tmp_path: Path) -> None:
    error = failure(job, tmp_path, {"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)})
    assert error.result_code == "dials_missing"
    assert "dials.index is not on PATH" in str(error)


def test_too_few_strong_spots(job: IndexingInput, tmp_path: Path) -> None:
    environment = fake_dials(
        tmp_path, dials_find_spots='echo "Saved 7 reflections to strong.refl"; touch strong.refl'
    )
    error = failure(job, tmp_path, environment)
    assert error.result_code == "too_few_spots"
    assert str(error) == "only 7 strong spots were found (at least 20 are needed)"


def test_a_step_that_exits_0_without_its_files_failed(job: IndexingInput, tmp_path: Path) -> None:
    environment = fake_dials(tmp_path, dials_index='echo "some trouble"; exit 0')
    error = failure(job, tmp_path, environment)
    assert error.result_code == "indexing_failed"
    assert str(error) == (
        "dials.index exited normally but wrote no indexed.expt, indexed.refl: some trouble"
    )


def test_no_lattice_is_an_indexing_failure(job: IndexingInput, tmp_path: Path) -> None:
    environment = fake_dials(
        tmp_path, dials_index='echo "Sorry: No suitable lattice could be found."; exit 1'
    )
    error = failure(job, tmp_path, environment)
    assert (error.result_code, str(error)) == (
        "indexing_failed",
        "dials.index: No suitable lattice could be found.",
    )


def test_a_crash_is_reported_without_its_traceback(job: IndexingInput, tmp_path: Path) -> None:
    crash = textwrap.dedent(
        """\
        cat <<'END'
        Traceback (most recent call last):
          File "/usr/lib/python3/dist-packages/dials/command_line/find_spots.py", line 9, in run
            raise RuntimeError("image 3 is unreadable")
        RuntimeError: image 3 is unreadable
        END
        exit 1"""
    )
    error = failure(job, tmp_path, fake_dials(tmp_path, dials_find_spots=crash))
    assert (error.result_code, str(error)) == (
        "dials_failed",
        "dials.find_spots: image 3 is unreadable",
    )
    assert (tmp_path / "02-dials.find_spots.log").read_text().startswith("Traceback")


def test_a_step_past_the_deadline_is_killed_with_its_group(
    job: IndexingInput, tmp_path: Path
) -> None:
    environment = fake_dials(tmp_path, dials_find_spots="sleep 600 & echo $! > sleeper.pid; wait")
    started = time.monotonic()
    error = failure(job, tmp_path, environment, timeout_s=1.0)
    assert error.result_code == "timeout"
    assert time.monotonic() - started < 6
    assert is_gone(int((tmp_path / "sleeper.pid").read_text()))


def test_missing_image_files_are_bad_input(tmp_path: Path) -> None:
    error = failure(IndexingInput((tmp_path / "gone.cbf",)), tmp_path, fake_dials(tmp_path))
    assert error.result_code == "bad_input"


def test_dials_complaint_prefers_sorry_lines() -> None:
    assert dials_complaint("Sorry: no images\nmore\n") == "no images"
    assert dials_complaint("\n\n") == "it gave no reason"


def test_dials_environment_is_clean() -> None:
    environment = dials_environment(
        {
            "PATH": f"{sys.prefix}/bin:/opt/dials/bin:/usr/bin",
            "VIRTUAL_ENV": sys.prefix,
            "PYTHONPATH": "/mine",
            "REDIS_PASSWORD": "hunter2",
            "HOME": "/home/u",
        }
    )
    assert environment == {
        "PATH": "/usr/bin:/opt/dials/bin:/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
    }
    site = dials_environment({"PATH": "/usr/bin", DIALS_PATH_VARIABLE: "/opt/dials/bin:/bin"})
    assert site["PATH"] == "/opt/dials/bin:/bin"


def test_the_program_reports_failures_as_results(tmp_path: Path) -> None:
    """The built-in command through the runner: DIALS missing is a result, never a traceback."""
    frame = tmp_path / "x_00001.cbf"
    frame.write_bytes(b"###CBF")
    empty = tmp_path / "empty"
    empty.mkdir()
    environment = minimal_environment(str(empty), **{DIALS_PATH_VARIABLE: str(empty)})
    seen: list[str] = []
    outcome = run_indexing(
        IndexingInput((frame,)),
        scratch_root=tmp_path / "scratch",
        progress=seen.append,
        environment=environment,
    )
    assert outcome.result == {
        "error": {
            "code": "dials_missing",
            "message": "DIALS is not installed: dials.index is not on PATH",
        }
    }
    assert outcome.exit_code == 0 and outcome.stderr_tail == ""
    assert seen == ["failed: DIALS is not installed: dials.index is not on PATH"]
    assert os.listdir(tmp_path / "scratch") == []


def test_stopping_the_program_stops_its_dials_step(tmp_path: Path) -> None:
    """A DIALS step leads a group of its own; the runner's SIGTERM must still reach it."""
    frame = tmp_path / "x_00001.cbf"
    frame.write_bytes(b"###CBF")
    pid_file = tmp_path / "sleeper.pid"
    dials = fake_dials(tmp_path, dials_find_spots=f"sleep 600 & echo $! > {pid_file}; wait")
    environment = minimal_environment(dials["PATH"], **{DIALS_PATH_VARIABLE: dials["PATH"]})
    outcome = run_indexing(
        IndexingInput((frame,)),
        scratch_root=tmp_path / "scratch",
        timeout_s=20.0,
        environment=environment,
        cancel=_CancelWhen(pid_file.exists),
    )
    assert outcome.result["error"]["code"] == "cancelled"
    assert is_gone(int(pid_file.read_text()))


class _CancelWhen(threading.Event):
    """Set once ``condition()`` holds (the runner asks whenever it polls)."""

    def __init__(self, condition: Callable[[], bool]) -> None:
        super().__init__()
        self.condition = condition

    def is_set(self) -> bool:
        return self.condition()
