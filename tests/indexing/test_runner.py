"""The runner against fake contract commands: results, progress, errors and killed groups."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from process_checks import is_gone

from imageserver.indexing.contract import IndexingInput
from imageserver.indexing.runner import run_indexing

JOB = IndexingInput((Path("/data/x_master.h5"),), image_range=(1, 15), detector="eiger2_16m")

# A fake RAPD: the fds come from the contract arguments, as a real indexer reads them.
PREAMBLE = """\
import json, os, sys, time
args = sys.argv[1:]
json_fd = int(args[args.index("--json-fd") + 1])
progress_fd = int(args[args.index("--progress-fd") + 1])
def progress(text):
    os.write(progress_fd, (text + "\\n").encode())
def result(obj):
    os.write(json_fd, json.dumps(obj).encode())
"""


def fake_command(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake_index.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_result_and_progress_come_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESERVER_SECRET", "hunter2")
    command = fake_command(
        tmp_path,
        """
        progress("importing")
        progress("finding spots\\x07 now")
        cwd = os.getcwd()
        mode = os.stat(cwd).st_mode & 0o777
        result({"argv": args, "cwd": cwd, "mode": mode, "env": sorted(os.environ),
                "uid": os.stat(cwd).st_uid, "unit_cell": [5.42, 8.13, 12.02, 90, 90, 90]})
        """,
    )
    seen: list[str] = []
    outcome = run_indexing(
        JOB, scratch_root=tmp_path / "scratch", progress=seen.append, command=command
    )
    assert outcome.ok, outcome.result
    result = outcome.result
    assert result["argv"] == [
        "--json", "--json-fd", result["argv"][2], "--progress-fd", result["argv"][4],
        "--detector", "eiger2_16m", "--hdf5_image_range", "1,15", "/data/x_master.h5",
    ]  # fmt: skip
    assert seen == ["importing", "finding spots now"] == outcome.progress
    assert Path(result["cwd"]).parent == tmp_path / "scratch"
    assert result["mode"] == 0o700 and result["uid"] == os.getuid()
    assert result["env"] == ["HOME", "LANG", "PATH"]
    assert not Path(result["cwd"]).exists()
    assert outcome.exit_code == 0 and outcome.scratch_dir is None
    assert stat.S_IMODE((tmp_path / "scratch").stat().st_mode) == 0o700


def test_keep_leaves_the_scratch_directory(tmp_path: Path) -> None:
    command = fake_command(
        tmp_path, 'open("note.txt", "w").write("kept"); result({"cwd": os.getcwd()})'
    )
    outcome = run_indexing(JOB, scratch_root=tmp_path / "scratch", command=command, keep=True)
    assert outcome.scratch_dir == Path(outcome.result["cwd"])
    assert (outcome.scratch_dir / "note.txt").read_text() == "kept"


def test_deadline_kills_the_whole_process_group(tmp_path: Path) -> None:
    command = fake_command(
        tmp_path,
        """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        progress(f"pids {os.getpid()} {child.pid}")
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends this one
        time.sleep(600)
        """,
    )
    seen: list[str] = []
    started = time.monotonic()
    outcome = run_indexing(
        JOB, scratch_root=tmp_path, timeout_s=1.5, progress=seen.append, command=command
    )
    elapsed = time.monotonic() - started
    assert outcome.result["error"]["code"] == "timeout"
    assert outcome.exit_code is None
    assert 1.5 <= elapsed < 8
    parent, child = (int(pid) for pid in seen[0].split()[1:])
    assert is_gone(parent) and is_gone(child)


def test_cancel_stops_the_job(tmp_path: Path) -> None:
    command = fake_command(tmp_path, 'progress("started"); time.sleep(600)')
    cancel = threading.Event()
    outcome = run_indexing(
        JOB,
        scratch_root=tmp_path,
        command=command,
        progress=lambda line: cancel.set(),
        cancel=cancel,
    )
    assert outcome.result["error"]["code"] == "cancelled"


def test_garbage_json_is_a_no_result_error(tmp_path: Path) -> None:
    command = fake_command(tmp_path, 'os.write(json_fd, b"{unit cell: 5.4")')
    outcome = run_indexing(JOB, scratch_root=tmp_path, command=command)
    assert outcome.result == {
        "error": {"code": "no_result", "message": "the indexing command wrote invalid JSON"}
    }


def test_no_json_at_all_is_a_no_result_error(tmp_path: Path) -> None:
    outcome = run_indexing(JOB, scratch_root=tmp_path, command=fake_command(tmp_path, "pass"))
    assert outcome.result["error"]["code"] == "no_result"


def test_non_zero_exit_is_a_command_failure(tmp_path: Path) -> None:
    command = fake_command(
        tmp_path, 'result({"unit_cell": [1, 2, 3]}); sys.exit("rapd: no license for BEST")'
    )
    outcome = run_indexing(JOB, scratch_root=tmp_path, command=command)
    assert outcome.exit_code == 1
    assert outcome.result["error"]["code"] == "command_failed"
    assert "status 1" in outcome.result["error"]["message"]
    assert outcome.stderr_tail == "rapd: no license for BEST"


def test_non_zero_exit_without_result_names_the_last_stderr_line(tmp_path: Path) -> None:
    command = fake_command(tmp_path, 'sys.stderr.write("warming up\\nout of disk\\n"); sys.exit(3)')
    outcome = run_indexing(JOB, scratch_root=tmp_path, command=command)
    assert outcome.result["error"] == {
        "code": "command_failed",
        "message": "the indexing command exited with status 3: out of disk",
    }


def test_an_error_result_is_passed_through(tmp_path: Path) -> None:
    error = {"error": {"code": "too_few_spots", "message": "7 strong spots"}}
    command = fake_command(tmp_path, f"result({error!r})")
    assert run_indexing(JOB, scratch_root=tmp_path, command=command).result == error


def test_a_missing_command_is_an_error_result(tmp_path: Path) -> None:
    outcome = run_indexing(JOB, scratch_root=tmp_path, command=["no-such-rapd.index"])
    assert outcome.result["error"]["code"] == "command_missing"
    assert "no-such-rapd.index" in outcome.result["error"]["message"]
    assert list(tmp_path.iterdir()) == []


def test_what_the_command_left_running_does_not_hold_the_job(tmp_path: Path) -> None:
    command = fake_command(
        tmp_path,
        """
        import subprocess
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], pass_fds=(json_fd,)
        )
        progress(f"child {child.pid}")
        result({"unit_cell": [1, 2, 3]})
        """,
    )
    seen: list[str] = []
    started = time.monotonic()
    outcome = run_indexing(JOB, scratch_root=tmp_path, command=command, progress=seen.append)
    assert outcome.ok and time.monotonic() - started < 10
    assert is_gone(int(seen[0].split()[1]))


def test_environment_is_the_callers_choice(tmp_path: Path) -> None:
    command = fake_command(tmp_path, 'result({"env": dict(os.environ)})')
    outcome = run_indexing(
        JOB, scratch_root=tmp_path, command=command, environment=RAPD_ENVIRONMENT
    )
    assert outcome.result["env"] == RAPD_ENVIRONMENT


RAPD_ENVIRONMENT = {"BASH_ENV": "/usr/local/bin/is_indexing_setup.sh", "LANG": "C.UTF-8"}
