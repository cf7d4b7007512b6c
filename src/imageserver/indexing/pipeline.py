"""The built-in indexer: DIALS, one step at a time, in the current (scratch) directory.

``dials.import`` → ``dials.find_spots`` → ``dials.index`` → ``dials.refine_bravais_settings``,
then a short report read by DIALS's own Python (spot counts, indexed fraction, RMSDs, per-image
resolution). Each step is a child in a process group of its own, its output in a log file here,
and is judged by the files it must write, since a DIALS step can fail and still exit 0. Every
failure becomes an `IndexingError` with one of the contract's error codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from imageserver.errors import IndexingError, Terminated
from imageserver.indexing.contract import IndexingInput
from imageserver.indexing.processes import die_with_parent, kill_group, seconds_left
from imageserver.indexing.results import build_result

MIN_STRONG_SPOTS = 20
CANCEL_POLL_S = 0.2
"""Fewer strong spots than this cannot fix three cell axes with any confidence."""
DEFAULT_TIMEOUT_S = 600.0
STEP_GRACE_S = 1.0
"""Shorter than the runner's grace, so a stopped job still stops its step before SIGKILL."""
DIALS_PATH_VARIABLE = "IMAGESERVER_DIALS_PATH"
"""When set, DIALS's PATH exactly (a site's DIALS outside /usr/bin)."""
REPORT_SCRIPT = Path(__file__).with_name("dials_report.py")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One DIALS program: its arguments and the files it must leave behind."""

    name: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    failure_code: str = "dials_failed"


def run_pipeline(
    job: IndexingInput,
    progress: Progress,
    *,
    workdir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    min_spots: int = MIN_STRONG_SPOTS,
    environment: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Index ``job`` with DIALS in ``workdir``; the result dict, or raise `IndexingError`.

    ``environment`` is DIALS's whole environment (default: `dials_environment` of ours).
    ``cancel`` is for a caller running this on one of its threads (a service worker): the
    step in progress is stopped when it is set, and the steps are tied to the process with
    ``setpriv --pdeathsig`` instead of a ``preexec_fn`` (unsafe in a threaded process).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    missing = [str(path) for path in job.files if not path.is_file()]
    if missing:
        raise IndexingError("bad_input", f"no such image file: {', '.join(missing[:3])}")
    environment = dict(dials_environment(os.environ) if environment is None else environment)
    dials_index = shutil.which("dials.index", path=environment["PATH"])
    if dials_index is None:
        raise IndexingError("dials_missing", "DIALS is not installed: dials.index is not on PATH")
    run = _StepRunner(workdir, environment, deadline, progress, cancel)

    n_images = _describe(job)
    progress(f"importing {n_images}")
    import_args = [str(path) for path in job.files]
    if job.image_range is not None:
        import_args.append(f"image_range={job.image_range[0]},{job.image_range[1]}")
    run(Step("dials.import", ("dials.import", *import_args), ("imported.expt",), "bad_input"))

    progress("finding spots")
    found = run(Step("dials.find_spots", ("dials.find_spots", "imported.expt"), ("strong.refl",)))
    n_strong = _saved_reflections(found)
    if n_strong is not None:
        progress(f"found {n_strong} strong spots")
        if n_strong < min_spots:
            raise IndexingError(
                "too_few_spots",
                f"only {n_strong} strong spots were found (at least {min_spots} are needed)",
            )

    progress("indexing")
    run(
        Step(
            "dials.index",
            ("dials.index", "imported.expt", "strong.refl"),
            ("indexed.expt", "indexed.refl"),
            "indexing_failed",
        )
    )
    progress("refining Bravais settings")
    run(
        Step(
            "dials.refine_bravais_settings",
            ("dials.refine_bravais_settings", "indexed.expt", "indexed.refl"),
            ("bravais_summary.json",),
        )
    )
    progress("summarising")
    report, report_problem = _report(run, dials_index)
    result = build_result(workdir, report)
    if report_problem:
        result["warnings"] = [report_problem]
    result["elapsed_s"] = round(time.monotonic() - started, 2)
    progress(_summary_line(result))
    return result


def dials_environment(base: Mapping[str, str]) -> dict[str, str]:
    """A clean environment for DIALS: /usr/bin first, no virtualenv, no user site, no PYTHONPATH.

    DIALS ships its own Python stack; anything of ours that leaks in (our venv's bin on PATH,
    PYTHONPATH, a user site) would shadow it. A site whose DIALS lives elsewhere names its
    directories in ``IMAGESERVER_DIALS_PATH``, which is then the whole PATH.
    """
    path = base.get(DIALS_PATH_VARIABLE)
    if not path:
        venv_bins = {str(Path(sys.prefix) / "bin")} if sys.prefix != sys.base_prefix else set()
        if base.get("VIRTUAL_ENV"):
            venv_bins.add(str(Path(base["VIRTUAL_ENV"]) / "bin"))
        inherited = [entry for entry in base.get("PATH", "").split(os.pathsep) if entry]
        kept = [entry for entry in inherited if entry not in venv_bins]
        path = os.pathsep.join(dict.fromkeys(["/usr/bin", *kept, "/bin"]))
    return {
        "PATH": path,
        "HOME": base.get("HOME", "/"),
        "LANG": base.get("LANG", "C.UTF-8"),
        "PYTHONNOUSERSITE": "1",
    }


class _StepRunner:
    """Runs steps in order, each in its own process group, its output in ``NN-name.log``."""

    def __init__(
        self,
        workdir: Path,
        environment: dict[str, str],
        deadline: float,
        progress: Progress,
        cancel: threading.Event | None = None,
    ) -> None:
        self.workdir = workdir
        self.environment = environment
        self.deadline = deadline
        self.progress = progress
        self.cancel = cancel
        self.count = 0

    def __call__(self, step: Step) -> str:
        """Run ``step``; its output text. Raises IndexingError on any failure."""
        self.count += 1
        log_path = self.workdir / f"{self.count:02d}-{step.name}.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            threaded = self.cancel is not None
            try:
                process = subprocess.Popen(
                    _tied_to_parent(step.argv) if threaded else step.argv,
                    cwd=self.workdir,
                    env=self.environment,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=None if threaded else die_with_parent,  # the indexer: 1 thread
                )
            except FileNotFoundError:
                raise IndexingError(
                    "dials_missing", f"DIALS is not installed completely: no {step.argv[0]}"
                ) from None
            try:
                self._wait(process)
            except _CancelledError:
                kill_group(process, grace_s=STEP_GRACE_S)
                raise IndexingError("cancelled", f"cancelled during {step.name}") from None
            except subprocess.TimeoutExpired:
                kill_group(process, grace_s=STEP_GRACE_S)
                raise IndexingError(
                    "timeout", f"{step.name} did not finish before the job's deadline"
                ) from None
            except BaseException:
                kill_group(process, grace_s=STEP_GRACE_S)
                raise
        output = log_path.read_text(errors="replace")
        self.progress(f"{step.name} finished in {time.monotonic() - started:.1f} s")
        if process.returncode != 0:
            raise IndexingError(step.failure_code, f"{step.name}: {dials_complaint(output)}")
        missing = [name for name in step.outputs if not (self.workdir / name).is_file()]
        if missing:
            raise IndexingError(
                step.failure_code,
                f"{step.name} exited normally but wrote no {', '.join(missing)}: "
                f"{dials_complaint(output)}",
            )
        return output

    def _wait(self, process: subprocess.Popen[bytes]) -> None:
        """Until the step ends; TimeoutExpired at the deadline, _CancelledError on ``cancel``."""
        if self.cancel is None:
            process.wait(timeout=seconds_left(self.deadline))
            return
        while True:
            if self.cancel.is_set():
                raise _CancelledError
            left = seconds_left(self.deadline)
            try:
                process.wait(timeout=min(CANCEL_POLL_S, left))
                return
            except subprocess.TimeoutExpired:
                if left <= CANCEL_POLL_S:
                    raise


class _CancelledError(Exception):
    """The caller set its cancel event while a step ran."""


def _tied_to_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` under ``setpriv --pdeathsig KILL`` when it exists: the step dies with the
    thread that started it (the service's worker), without code between fork and exec."""
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


def dials_complaint(output: str) -> str:
    """The line of a DIALS program's output that says what went wrong, never a traceback."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Sorry:"):
            return line.removeprefix("Sorry:").strip()
    for line in reversed(lines):
        if not line.startswith(("File ", "Traceback", "^", "~")):
            line = re.sub(r"^[A-Za-z_.]*(Error|Exception|Sorry): ", "", line)
            return re.sub(r"^Please report this error to \S+: ", "", line)[:500]
    return "it gave no reason"


def _describe(job: IndexingInput) -> str:
    if job.image_range is not None:
        first, last = job.image_range
        return f"frames {first}-{last} of {job.files[0].name}"
    if len(job.files) == 1:
        return job.files[0].name
    return f"{len(job.files)} images ({job.files[0].name} … {job.files[-1].name})"


def _saved_reflections(output: str) -> int | None:
    match = re.search(r"Saved (\d+) reflections to strong\.refl", output)
    return int(match[1]) if match else None


def _report(run: _StepRunner, dials_index: str) -> tuple[dict[str, Any], str | None]:
    """Counts and RMSDs from DIALS's own reflection files, read by DIALS's Python."""
    python = dials_python(dials_index)
    if python is None:
        return {}, "no DIALS Python found: spot counts, RMSDs and resolution are missing"
    try:
        run(
            Step(
                "report",
                (python, "-I", str(REPORT_SCRIPT), "report.json"),
                ("report.json",),
            )
        )
    except IndexingError as exc:
        if exc.result_code == "timeout":
            raise
        return {}, f"spot counts, RMSDs and resolution are missing ({exc})"
    report: dict[str, Any] = json.loads((run.workdir / "report.json").read_text())
    return report, None


def dials_python(dials_index: str) -> str | None:
    """The interpreter DIALS runs in: ``dials.python``, or the one ``dials.index`` names."""
    wrapper = shutil.which("dials.python", path=os.path.dirname(dials_index))
    if wrapper is not None:
        return wrapper
    with open(dials_index, "rb") as script:
        first = script.readline(400)
    if not first.startswith(b"#!"):
        return None
    interpreter = first[2:].decode(errors="replace").split()
    if interpreter and "python" in os.path.basename(interpreter[0]):
        return interpreter[0]
    return None


def _summary_line(result: dict[str, Any]) -> str:
    cell = result["unit_cell"]
    lengths = " ".join(f"{cell[key]:.2f}" for key in ("a", "b", "c"))
    angles = " ".join(f"{cell[key]:.1f}" for key in ("alpha", "beta", "gamma"))
    return f"indexed: {result['lattice']} {result['space_group']}, cell {lengths} {angles}"


def install_termination_handler() -> None:
    """Turn SIGTERM into `Terminated`, so the step under way is stopped with its group."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)
