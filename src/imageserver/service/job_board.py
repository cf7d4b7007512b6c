"""JobBoard: how each index job of an ESAF group stands, readable by every member's worker.

An index job outlives the request that started it as far as its users are concerned: a
browser reloads, a gateway restarts, a colleague on the same experiment wants the result. So
the worker running a job writes its record — state, inputs, the last progress lines and, at
the end, the result — to the shared Redis under ``<prefix>:<gid>:job:<digest of tag>``, a
name only this ESAF group's Redis user may read or write (`cache.acl`). A ``job`` request
reads it back in the asking user's worker for that ESAF, so the record is readable only with
that ESAF's credentials and only after the manager has checked the session.

A running job's record is rewritten every `HEARTBEAT_S` (its ``updated`` time), so a reader
can tell a job whose worker died (killed, out of memory, the node gone) from one still
running: a ``running`` record not updated for `STALE_S` is reported as ``failed``.

Every record is kept in the worker's memory too: without a shared tier (or while Redis is
down) the starting user's own worker still answers for its jobs. Redis failures never fail
or slow a job: a write that cannot be made is skipped, and the final write is always tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pwd
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from imageserver.cache.shared import RedisLink
from imageserver.errors import CacheUnavailableError, JobUnknownError

log = logging.getLogger(__name__)

STATES = ("running", "done", "failed", "cancelled")
"""A record's ``state``: ``done`` carries the indexer's result (which may be an error
result); ``failed`` means the job could not start (its inputs), with ``error``."""
MAX_PROGRESS_LINES = 50
MAX_LINE_CHARS = 500
MAX_MEMORY_RECORDS = 256
HEARTBEAT_S = 15.0
STALE_S = 3 * HEARTBEAT_S
WRITE_INTERVAL_S = 0.5
"""Progress lines reach Redis at most this late (one write carries all that came since);
a job's start and end at once."""


@dataclass
class JobRecord:
    tag: str
    login: str
    inputs: dict[str, Any]
    state: str = "running"
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    finished: float | None = None
    progress: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        for optional in ("result", "error", "finished"):
            if document[optional] is None:
                del document[optional]
        return document


class JobBoard:
    """The records of one worker's ESAF group: written by its jobs, read by ``job`` requests."""

    def __init__(self, link: RedisLink | None, gid: int, ttl_s: int) -> None:
        self._link = link
        self._gid = gid
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        """Held from snapshot to SET, so an older snapshot never overwrites a newer one."""
        self._memory: OrderedDict[str, JobRecord] = OrderedDict()
        self._unwritten: set[str] = set()
        """Tags of records with progress lines not yet in Redis."""
        self._writer: threading.Thread | None = None

    def start(self, tag: str, inputs: dict[str, Any]) -> JobRecord:
        record = JobRecord(tag=tag, login=_login(), inputs=inputs)
        self._save(record)
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._beat, name="job-board", daemon=True)
                self._writer.start()
        return record

    def progress(self, record: JobRecord, line: str) -> None:
        """Kept now; written by the board's thread within `WRITE_INTERVAL_S`."""
        with self._lock:
            record.progress.append(line[:MAX_LINE_CHARS])
            del record.progress[:-MAX_PROGRESS_LINES]
            self._unwritten.add(record.tag)

    def finish(
        self,
        record: JobRecord,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        assert state in STATES[1:], state
        with self._lock:
            record.state, record.result, record.error = state, result, error
            record.finished = time.time()
        self._save(record)

    def read(self, tag: str) -> dict[str, Any]:
        """The record of ``tag`` (any member's job), a running one whose worker stopped
        updating it reported as failed."""
        document = self._find(tag)
        if document.get("state") == "running" and time.time() - _updated(document) > STALE_S:
            document["state"] = "failed"
            document["error"] = {
                "code": "worker_failed",
                "message": "the worker running the job stopped without finishing it",
            }
        return document

    def _find(self, tag: str) -> dict[str, Any]:
        """The newer of the shared record and this worker's own (a write may have failed)."""
        found = [document for document in (self._shared(tag), self._own(tag)) if document]
        if not found:
            raise JobUnknownError(f"no index job {tag[:80]!r} for this ESAF")
        return max(found, key=_updated)

    def _shared(self, tag: str) -> dict[str, Any] | None:
        if self._link is None:
            return None
        try:
            data = self._link.run(lambda client: client.get(self._name(tag)))
        except CacheUnavailableError:
            return None
        try:
            document = json.loads(data) if isinstance(data, bytes) else None
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    def _own(self, tag: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._memory.get(tag)
            return None if record is None else record.to_json()

    def _save(self, record: JobRecord) -> None:
        """Stamp, keep and write ``record`` now (the write lock held from snapshot to SET,
        so an older snapshot never overwrites a newer one)."""
        with self._write_lock:
            with self._lock:
                record.updated = time.time()
                self._memory[record.tag] = record
                self._memory.move_to_end(record.tag)
                while len(self._memory) > MAX_MEMORY_RECORDS:
                    self._memory.popitem(last=False)
                self._unwritten.discard(record.tag)
                data = json.dumps(record.to_json(), allow_nan=False)
            if self._link is not None:
                self._write(record.tag, data)

    def _beat(self) -> None:
        """For as long as the worker lives: progress lines out every `WRITE_INTERVAL_S`,
        every running record rewritten every `HEARTBEAT_S` (its ``updated`` time)."""
        last_beat = time.monotonic()
        while True:
            time.sleep(WRITE_INTERVAL_S)
            beat = time.monotonic() - last_beat >= HEARTBEAT_S
            with self._lock:
                due = [
                    record
                    for record in self._memory.values()
                    if record.tag in self._unwritten or (beat and record.state == "running")
                ]
            if beat:
                last_beat = time.monotonic()
            for record in due:
                self._save(record)

    def _write(self, tag: str, data: str) -> None:
        assert self._link is not None
        name = self._name(tag)
        # A failure is logged by the link; the memory record still answers this worker.
        with contextlib.suppress(CacheUnavailableError):
            self._link.run(lambda client: client.set(name, data, ex=self._ttl_s))

    def _name(self, tag: str) -> str:
        digest = hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        assert self._link is not None
        return f"{self._link.prefix}:{self._gid}:job:{digest}"


def _updated(document: dict[str, Any]) -> float:
    updated = document.get("updated")
    return float(updated) if isinstance(updated, int | float) else 0.0


def _login() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
