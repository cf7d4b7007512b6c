"""A worker's index jobs: run beside the view jobs, stopped by tag, progress published.

An index job runs for minutes, so the worker gives it its own thread (never a render
thread) and its own deadline; its programs run in their own process group, in a scratch
directory made by and for the user. Progress goes, as the legacy server sent it, to a Redis
channel the request names: ``{"progress": text, "done": false, "tag": tag}`` per line and
``{"done": true, "tag": tag}`` at the end — but only to a host the configuration allows, so
a request cannot make a worker connect anywhere else.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from imageserver.config import IndexSettings
from imageserver.errors import RequestError
from imageserver.formats.boundary import translated
from imageserver.indexing.contract import IndexingInput
from imageserver.indexing.runner import IndexingOutcome, minimal_environment, run_indexing
from imageserver.service.requests import IndexRequest

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 0.5


class ProgressChannel:
    """Where a job's progress lines go: a Redis channel, or nowhere (never an error)."""

    def __init__(self, request: IndexRequest, allowed_hosts: frozenset[str]) -> None:
        self.tag = request.progress_tag
        self.channel = request.progress_publisher
        self._client: redis.Redis | None = None
        wanted = bool(self.channel and request.progress_address and request.progress_port > 0)
        if wanted and request.progress_address not in allowed_hosts:
            log.warning(
                "index %s: progress host %r is not in [index] progress_hosts; not publishing",
                self.tag,
                request.progress_address[:100],
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

    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._running: dict[str, list[threading.Event]] = {}

    def run(self, request: IndexRequest, deadline: float) -> dict[str, Any]:
        """Index the request's files until ``deadline`` (time.monotonic); the result dict
        (with ``error`` when indexing failed; a malformed request raises RequestError)."""
        job = _indexing_input(request)
        channel = ProgressChannel(request, self.settings.progress_host_set)
        with self._registered(request.progress_tag) as cancel:
            outcome = self._run(job, deadline, channel, cancel, request.keep)
        channel.done()
        log.info(
            "index %s: %s in %.1f s",
            request.progress_tag,
            "done" if outcome.ok else outcome.result["error"].get("code"),
            outcome.elapsed_s,
        )
        return outcome.result

    def cancel(self, tag: str) -> int:
        """Stop the running jobs of ``tag``; how many there were."""
        with self._lock:
            events = list(self._running.get(tag, ()))
        for event in events:
            event.set()
        return len(events)

    def _run(
        self,
        job: IndexingInput,
        deadline: float,
        channel: ProgressChannel,
        cancel: threading.Event,
        keep: bool,
    ) -> IndexingOutcome:
        options: dict[str, Any] = {}
        if self.settings.command:
            options = {
                "command": shlex.split(self.settings.command),
                "environment": minimal_environment(),
            }
        return run_indexing(
            job,
            scratch_root=Path(self.settings.scratch_root),
            deadline=deadline,
            progress=channel.line,
            keep=keep or self.settings.keep_scratch,
            cancel=cancel,
            **options,
        )

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
    file_missing / permission_denied error instead of the indexer's own words)."""
    files = tuple(Path(name) for name in request.inputs)
    for path in files:
        if not path.is_absolute():
            raise RequestError(f"{path}: index files must be absolute paths")
        with translated(path), open(path, "rb"):
            pass
    image_range = None
    if request.frame1 > 0:
        if len(files) != 1:
            raise RequestError("frame1 and frame2 name frames of one file, not of several")
        image_range = (request.frame1, max(request.frame2, request.frame1))
    try:
        return IndexingInput(files, image_range)
    except ValueError as exc:
        raise RequestError(f"cannot index these files: {exc}") from None


def monotonic_deadline(deadline_ns: int) -> float:
    """The link's deadline (monotonic ns) as a time.monotonic() instant."""
    return deadline_ns / 1e9 if deadline_ns > 0 else time.monotonic() + 600.0
