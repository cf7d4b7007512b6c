"""Run one indexing job through the contract command and return its result.

Used by `imageserver index` and by the service: the command (ours or a site's ``rapd.index``)
runs in a fresh scratch directory, in a process group of its own, with a minimal environment
(no secret of the caller's reaches it), and is killed with its whole group at the deadline or on
cancel. Its progress lines are handed to a callback as they arrive; its one JSON object is the
result. Whatever goes wrong, the caller gets a result dict, with ``error`` on failure.
"""

from __future__ import annotations

import json
import os
import pwd
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageserver.indexing.contract import IndexingInput, contract_arguments, error_result
from imageserver.indexing.processes import kill_group, reap_group, seconds_left

DEFAULT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "imageserver.indexing")
"""The built-in DIALS pipeline, run by this very interpreter (so it needs no PATH)."""
DEFAULT_TIMEOUT_S = 600.0
MAX_RESULT_BYTES = 16 << 20
"""A result larger than this is not a result (a runaway program); the job fails."""
MAX_PROGRESS_LINE = 2000
MAX_STDERR_BYTES = 64 << 10
"""Only the end of the command's stderr is kept, for the error message."""
POLL_S = 0.1
EXIT_DRAIN_S = 1.0
"""After the command exits, how long its pipes may stay open (held by what it started)."""

Progress = Callable[[str], None]


@dataclass
class IndexingOutcome:
    """A finished job: the result dict (``error`` on failure) and what else the caller may log."""

    result: dict[str, Any]
    elapsed_s: float
    exit_code: int | None
    """The command's exit status; None when it could not be started or was killed."""
    stderr_tail: str = ""
    scratch_dir: Path | None = None
    """The job's directory, when it was kept (``keep``); otherwise it is gone."""
    progress: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return "error" not in self.result


def minimal_environment(path: str | None = None, **extra: str) -> dict[str, str]:
    """PATH, HOME and LANG, nothing inherited: the child never sees the caller's secrets.

    HOME is the running user's (a worker that changed its uid may still carry root's HOME).
    """
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        home = os.environ.get("HOME", "/")
    environment = {
        "PATH": path or "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
    }
    environment.update(extra)
    return environment


def run_indexing(
    job: IndexingInput,
    *,
    scratch_root: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    deadline: float | None = None,
    progress: Progress | None = None,
    command: Sequence[str] = DEFAULT_COMMAND,
    environment: Mapping[str, str] | None = None,
    keep: bool = False,
    cancel: threading.Event | None = None,
) -> IndexingOutcome:
    """Index ``job`` with ``command`` in a new directory under ``scratch_root``.

    ``deadline`` is a ``time.monotonic()`` instant (default: now + ``timeout_s``); ``cancel``,
    when set, stops the job as the deadline does. ``environment`` is the command's whole
    environment (default `minimal_environment`). The scratch directory is private (0700, owned
    by the caller) and removed at the end unless ``keep``.
    """
    started = time.monotonic()
    if deadline is None:
        deadline = started + timeout_s
    scratch_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="index-", dir=scratch_root))
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if progress is not None:
            progress(line)

    try:
        result, exit_code, stderr = _run_command(
            job, scratch, deadline, report, list(command), environment, cancel
        )
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return IndexingOutcome(
        result=result,
        elapsed_s=time.monotonic() - started,
        exit_code=exit_code,
        stderr_tail=stderr,
        scratch_dir=scratch if keep else None,
        progress=lines,
    )


def _run_command(
    job: IndexingInput,
    scratch: Path,
    deadline: float,
    report: Progress,
    command: list[str],
    environment: Mapping[str, str] | None,
    cancel: threading.Event | None,
) -> tuple[dict[str, Any], int | None, str]:
    json_read, json_write = os.pipe()
    progress_read, progress_write = os.pipe()
    argv = command + contract_arguments(job, json_fd=json_write, progress_fd=progress_write)
    try:
        process = subprocess.Popen(
            argv,
            cwd=scratch,
            env=dict(environment) if environment is not None else minimal_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(json_write, progress_write),
            start_new_session=True,
        )
    except OSError as exc:
        for fd in (json_read, json_write, progress_read, progress_write):
            os.close(fd)
        code = "command_missing" if isinstance(exc, FileNotFoundError) else "command_failed"
        return error_result(code, f"cannot start {command[0]}: {exc.strerror or exc}"), None, ""
    os.close(json_write)
    os.close(progress_write)
    assert process.stderr is not None
    streams = _Streams(json_read, progress_read, process.stderr.fileno(), report)
    try:
        stop = streams.pump(process, deadline, cancel)
    except BaseException:
        kill_group(process)
        raise
    finally:
        streams.close()
        process.stderr.close()
    if stop is not None:
        kill_group(process)
        return error_result(*stop), None, streams.stderr_tail()
    reap_group(process)
    exit_code = process.returncode
    return (
        _parse_result(bytes(streams.json), exit_code, streams.stderr_tail()),
        exit_code,
        (streams.stderr_tail()),
    )


class _Streams:
    """The three pipes from the command, read without blocking, all in one selector."""

    def __init__(self, json_fd: int, progress_fd: int, stderr_fd: int, report: Progress) -> None:
        self.json = bytearray()
        self.stderr = bytearray()
        self._pending = b""
        self._report = report
        self._too_large = False
        self._selector = selectors.DefaultSelector()
        for fd, name in ((json_fd, "json"), (progress_fd, "progress"), (stderr_fd, "stderr")):
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ, name)
        self._owned = (json_fd, progress_fd)

    def pump(
        self, process: subprocess.Popen[bytes], deadline: float, cancel: threading.Event | None
    ) -> tuple[str, str] | None:
        """Read until every pipe is closed and the command exited; a reason to stop it, or None.

        A command that exits while something it started still holds a pipe is not waited for:
        its group is reaped by the caller.
        """
        exited_at: float | None = None
        while True:
            if cancel is not None and cancel.is_set():
                return "cancelled", "the indexing job was cancelled"
            left = seconds_left(deadline)
            if left <= 0:
                return "timeout", "indexing did not finish before its deadline"
            if self._too_large:
                return "no_result", f"the result is larger than {MAX_RESULT_BYTES} bytes"
            if self._selector.get_map():
                for key, _ in self._selector.select(min(POLL_S, left)):
                    self._read(key)
            else:  # every pipe closed: only the exit is missing
                try:
                    process.wait(timeout=min(POLL_S, left))
                except subprocess.TimeoutExpired:
                    continue
            if process.poll() is None:
                continue
            if exited_at is None:
                exited_at = time.monotonic()
            if not self._selector.get_map() or time.monotonic() - exited_at > EXIT_DRAIN_S:
                break
        self._flush_progress()
        return None

    def _read(self, key: selectors.SelectorKey) -> None:
        fd = int(key.fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._selector.unregister(fd)
            return
        if key.data == "json":
            self.json += chunk
            self._too_large = len(self.json) > MAX_RESULT_BYTES
        elif key.data == "stderr":
            self.stderr += chunk
            del self.stderr[:-MAX_STDERR_BYTES]
        else:
            self._pending += chunk
            *complete, self._pending = self._pending.split(b"\n")
            for line in complete:
                self._emit(line)
            if len(self._pending) > MAX_PROGRESS_LINE:
                self._emit(self._pending)
                self._pending = b""

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        line = "".join(ch for ch in text if ch.isprintable()).strip()[:MAX_PROGRESS_LINE]
        if line:
            self._report(line)

    def _flush_progress(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def stderr_tail(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()

    def close(self) -> None:
        self._selector.close()
        for fd in self._owned:
            os.close(fd)


def _parse_result(raw: bytes, exit_code: int, stderr: str) -> dict[str, Any]:
    """The command's JSON object; a missing, invalid or non-object result is an error result."""
    last_words = stderr.splitlines()[-1] if stderr else ""
    result: Any = None
    if raw.strip():
        try:
            result = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            result = None
    if isinstance(result, dict) and result:
        if exit_code != 0 and "error" not in result:
            return error_result(
                "command_failed", f"the indexing command exited with status {exit_code}"
            )
        return result
    if exit_code != 0:
        detail = f": {last_words}" if last_words else ""
        return error_result(
            "command_failed", f"the indexing command exited with status {exit_code}{detail}"
        )
    what = "invalid JSON" if raw.strip() else "no result"
    detail = f" ({last_words})" if last_words else ""
    return error_result("no_result", f"the indexing command wrote {what}{detail}")
