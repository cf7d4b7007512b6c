"""A worker's index jobs: run beside the view jobs, stopped by tag, progress published.

An index job runs for minutes, so the worker gives it its own thread (never a render
thread) and its own deadline; its programs run in their own process group, in a scratch
directory made by and for the user. Progress goes, as the legacy server sent it, to a Redis
channel the request names: ``{"progress": text, "done": false, "tag": tag}`` per line and
``{"done": true, "tag": tag}`` at the end — but only to a host the configuration allows, so
a request cannot make a worker connect anywhere else. Each job's record (state, progress,
result) goes to the ESAF's `JobBoard`, where ``job`` requests of any member read it.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from imageserver.config import IndexSettings
from imageserver.errors import ImageServerError, IndexingError, RequestError
from imageserver.formats.boundary import translated
from imageserver.indexing.contract import IndexingInput, error_result
from imageserver.indexing.inputs import build_input, rapd_detector
from imageserver.indexing.pipeline import dials_environment, run_pipeline
from imageserver.indexing.runner import minimal_environment, run_indexing
from imageserver.service.job_board import JobBoard, JobRecord
from imageserver.service.requests import IndexRequest

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 0.5


class ProgressChannel:
    """Where a job's progress lines go: a Redis channel, or nowhere (never an error)."""

    def __init__(
        self,
        request: IndexRequest,
        settings: IndexSettings,
        board: tuple[JobBoard, JobRecord] | None = None,
    ) -> None:
        self.tag = request.progress_tag
        self._board = board
        self.channel = request.progress_publisher
        self._client: redis.Redis | None = None
        wanted = bool(self.channel and request.progress_address and request.progress_port > 0)
        address, port = request.progress_address, request.progress_port
        if wanted and not settings.allows_progress_to(address, port):
            log.warning(
                "index %s: progress server %r port %d is not in [index] progress_hosts;"
                " not publishing",
                self.tag,
                address[:100],
                port,
            )
        elif wanted:
            self._client = redis.Redis(
                host=request.progress_address,
                port=request.progress_port,
                socket_timeout=PUBLISH_TIMEOUT_S,
                socket_connect_timeout=PUBLISH_TIMEOUT_S,
            )
        self._failed = False

    def line(self, text: str) -> None:
        if self._board is not None:
            self._board[0].progress(self._board[1], text)
        self._publish({"progress": text, "done": False, "tag": self.tag})

    def done(self) -> None:
        self._publish({"done": True, "tag": self.tag})
        if self._client is not None:
            self._client.close()

    def _publish(self, message: dict[str, Any]) -> None:
        if self._client is None or self._failed:
            return
        try:
            self._client.publish(self.channel, json.dumps(message))
        except redis.RedisError as exc:
            self._failed = True  # one warning per job, and the job goes on
            log.warning("index %s: cannot publish progress: %s", self.tag, exc)


class IndexJobs:
    """The index jobs of one worker, each cancellable by its tag while it runs."""

    def __init__(self, settings: IndexSettings, board: JobBoard | None = None) -> None:
        self.settings = settings
        self.board = board or JobBoard(None, os.getgid(), settings.record_ttl_s)
        self._lock = threading.Lock()
        self._running: dict[str, list[threading.Event]] = {}

    def run(self, request: IndexRequest, deadline: float) -> dict[str, Any]:
        """Index the request's files until ``deadline`` (time.monotonic); the result dict
        (with ``error`` when indexing failed; a malformed request raises RequestError).
        The job's record on the board follows it from start to end."""
        record = self.board.start(request.progress_tag, _record_inputs(request))
        try:
            result = self._run(request, deadline, record)
        except BaseException as exc:
            failure = (
                {"code": exc.code, "message": str(exc)}
                if isinstance(exc, ImageServerError)
                else {"code": "internal", "message": "the index job failed; see the log"}
            )
            self.board.finish(record, "failed", error=failure)
            raise
        cancelled = result.get("error", {}).get("code") == "cancelled"
        self.board.finish(record, "cancelled" if cancelled else "done", result=result)
        return result

    def _run(self, request: IndexRequest, deadline: float, record: JobRecord) -> dict[str, Any]:
        job = _indexing_input(request)
        channel = ProgressChannel(request, self.settings, board=(self.board, record))
        started = time.monotonic()
        keep = request.keep or self.settings.keep_scratch
        with self._registered(request.progress_tag) as cancel:
            if self.settings.command:
                result = self._run_command(job, deadline, channel, cancel, keep)
            else:
                result = self._run_builtin(job, deadline, channel, cancel, keep)
        channel.done()
        log.info(
            "index %s: %s in %.1f s",
            request.progress_tag,
            result["error"].get("code") if "error" in result else "done",
            time.monotonic() - started,
        )
        return result

    def cancel(self, tag: str) -> int:
        """Stop the running jobs of ``tag``; how many there were."""
        with self._lock:
            events = list(self._running.get(tag, ()))
        for event in events:
            event.set()
        return len(events)

    def _run_command(
        self,
        job: IndexingInput,
        deadline: float,
        channel: ProgressChannel,
        cancel: threading.Event,
        keep: bool,
    ) -> dict[str, Any]:
        """A site's indexer with RAPD's contract, in a process group of its own."""
        outcome = run_indexing(
            job,
            scratch_root=Path(self.settings.scratch_root),
            deadline=deadline,
            progress=channel.line,
            keep=keep,
            cancel=cancel,
            command=shlex.split(self.settings.command),
            environment=minimal_environment(HOME=_home()),
        )
        return outcome.result

    def _run_builtin(
        self,
        job: IndexingInput,
        deadline: float,
        channel: ProgressChannel,
        cancel: threading.Event,
        keep: bool,
    ) -> dict[str, Any]:
        """The DIALS pipeline driven from this thread: the worker cannot count on executing
        its own interpreter after the privilege drop (it may live under /root), and DIALS's
        programs are the ones that run."""
        scratch = Path(tempfile.mkdtemp(prefix="index-", dir=self.settings.scratch_root))
        try:
            return run_pipeline(
                job,
                channel.line,
                workdir=scratch,
                timeout_s=max(0.0, deadline - time.monotonic()),
                environment=dials_environment(minimal_environment(HOME=_home())),
                cancel=cancel,
            )
        except IndexingError as exc:
            return error_result(exc.result_code, str(exc))
        except Exception as exc:  # a result, never a traceback, for the user
            log.exception("index: the pipeline failed")
            return error_result("internal", f"the indexing pipeline failed ({type(exc).__name__})")
        finally:
            if not keep:
                shutil.rmtree(scratch, ignore_errors=True)

    @contextmanager
    def _registered(self, tag: str) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._running.setdefault(tag, []).append(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._running[tag]
                events.remove(event)
                if not events:
                    del self._running[tag]


def _indexing_input(request: IndexRequest) -> IndexingInput:
    """The job to run, once every file is there and readable as the user (a clear
    file_missing / permission_denied error instead of the indexer's own words); frames
    ``frame1``–``frame2`` of a master, or of the run the one file belongs to (legacy §2.5)."""
    files = tuple(Path(name) for name in request.inputs)
    for path in files:
        if not path.is_absolute():
            raise RequestError(f"{path}: index files must be absolute paths")
        with translated(path), open(path, "rb"):
            pass
    frames = None
    if request.frame1 > 0:
        frames = (request.frame1, max(request.frame2, request.frame1))
    with translated(files[0]):
        return build_input(files, frames, rapd_detector(files[0]))


def _record_inputs(request: IndexRequest) -> dict[str, Any]:
    """What the record says was asked: the files and the frame range, nothing else."""
    inputs: dict[str, Any] = {"files": list(request.inputs)}
    if request.frame1 > 0:
        inputs["frames"] = [request.frame1, max(request.frame2, request.frame1)]
    return inputs


def _home() -> str:
    """The user's own home: the worker's environment still names the manager's."""
    return pwd.getpwuid(os.getuid()).pw_dir


def monotonic_deadline(deadline_ns: int) -> float:
    """The link's deadline (monotonic ns) as a time.monotonic() instant."""
    return deadline_ns / 1e9 if deadline_ns > 0 else time.monotonic() + 600.0
