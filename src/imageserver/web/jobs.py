"""Index jobs over HTTP: started as one wire `index` request, followed through its record.

An index job takes a minute or more, longer than a browser waits for one response, so
`POST /api/v1/jobs/index` starts the wire request in the background and answers at once
with the job's id, ``<esaf>-<16 hex>`` (the wire tag is ``web-<16 hex>``). How a job stands
is not kept here: the worker running it writes its record (state, progress lines, result)
to the ESAF's job board in the shared Redis (`service.job_board`), and `GET
/api/v1/jobs/{id}` reads it with a wire ``job`` request — so any session allowed that ESAF
sees it (the manager checks), and a gateway restart forgets nothing. What only this gateway
can know is kept for an hour: a job the chain refused or lost before any worker wrote its
record (busy, a worker that could not start, the job's own deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from imageserver.errors import BusyError, ChainError
from imageserver.web.chain_client import ChainClient, ChainReply
from imageserver.web.sessions import session_hash

MAX_JOBS_PER_SESSION = 16
FINISHED_KEEP_S = 3600.0
JOB_ID = re.compile(r"(?P<esaf>\d{1,10})-(?P<key>[0-9a-f]{16})")
RECORD_FIELDS = (
    "state",
    "login",
    "inputs",
    "started",
    "updated",
    "finished",
    "progress",
    "position",
    "result",
    "error",
)
"""What a job document takes from the worker's record (`service.job_board.JobRecord`)."""
Ask = Callable[[dict[str, Any]], Awaitable[ChainReply]]
"""One wire request with the caller's session (`app.Gateway.ask`)."""


@dataclass
class StartedJob:
    """A job this gateway started: its wire request in flight, and how that ended."""

    id: str
    session: str
    """The starting session's short hash (never the token)."""
    esaf: int
    inputs: dict[str, Any]
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    """The chain's refusal of the wire request (no record may exist)."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def tag(self) -> str:
        return wire_tag(self.id)

    def as_json(self) -> dict[str, Any]:
        """What this gateway knows by itself: for a job without a record yet (or ever)."""
        state = "starting" if self.finished is None else "failed" if self.error else "done"
        document: dict[str, Any] = {
            "id": self.id,
            "esaf": self.esaf,
            "state": state,
            "inputs": self.inputs,
            "started": self.started,
        }
        if self.finished is not None:
            document["finished"] = self.finished
        if self.error is not None:
            document["error"] = self.error
            if self.error.get("code") == "cancelled":
                document["state"] = "cancelled"
        if self.result is not None:
            document["result"] = self.result
        return document


class JobTable:
    """Starts index jobs on one chain client and reads their records back through it."""

    def __init__(self, client_of: Callable[[], ChainClient | None], timeout_s: float) -> None:
        self._client_of = client_of
        """The gateway's `ChainClient`, made when the app starts."""
        self._timeout_s = timeout_s
        self._started: dict[str, StartedJob] = {}

    def start(self, token: str, esaf: int, inputs: dict[str, Any]) -> StartedJob:
        """Send the wire request in the background; BusyError beyond the session's share."""
        self._forget_old()
        session = session_hash(token)
        running = [
            job for job in self._started.values() if job.session == session and job.finished is None
        ]
        if len(running) >= MAX_JOBS_PER_SESSION:
            raise BusyError(f"this session already runs {MAX_JOBS_PER_SESSION} index jobs")
        job = StartedJob(
            id=f"{esaf}-{secrets.token_hex(8)}", session=session, esaf=esaf, inputs=inputs
        )
        self._started[job.id] = job
        wire = {"type": "index", "pid": token, "esaf": esaf, "tag": job.tag, **inputs}
        job.task = asyncio.get_running_loop().create_task(self._run(job, wire))
        return job

    async def status(self, ask: Ask, job_id: str) -> dict[str, Any]:
        """The job's document, from its record, asked with ``ask`` (the caller's session,
        within its share of the chain); ChainError ``job_unknown`` when there is none, or
        the session's refusal (a session not allowed the job's ESAF)."""
        esaf = job_esaf(job_id)
        started = self._started.get(job_id)
        try:
            reply = await ask({"type": "job", "esaf": esaf, "tag": wire_tag(job_id)})
        except ChainError as exc:
            if exc.wire_code == "job_unknown" and started is not None:
                return started.as_json()  # refused before any worker wrote its record
            raise
        record = json.loads(reply.document) if reply.document else {}
        document = {"id": job_id, "esaf": esaf}
        document.update((name, record[name]) for name in RECORD_FIELDS if name in record)
        if started is not None and started.error is not None and document["state"] == "running":
            document.update(state="failed", error=started.error, finished=started.finished)
        return document

    async def cancel(self, ask: Ask, job_id: str) -> None:
        await ask({"type": "cancel", "esaf": job_esaf(job_id), "tag": wire_tag(job_id)})

    async def close(self) -> None:
        for job in self._started.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task

    async def _run(self, job: StartedJob, wire: dict[str, Any]) -> None:
        try:
            reply = await self._client().request(wire, timeout_s=self._timeout_s)
            job.result = json.loads(reply.document) if reply.document else {}
        except ChainError as exc:
            job.error = {"code": exc.wire_code, "message": exc.message}
        except ValueError:
            job.error = {"code": "internal", "message": "the indexer's result is not JSON"}
        finally:
            job.finished = time.time()

    def _client(self) -> ChainClient:
        client = self._client_of()
        assert client is not None, "the app has not started"
        return client

    def _forget_old(self) -> None:
        now = time.time()
        for job_id, job in list(self._started.items()):
            if job.finished is not None and now - job.finished > FINISHED_KEEP_S:
                del self._started[job_id]


def job_esaf(job_id: str) -> int:
    """The ESAF a job id names; ChainError ``job_unknown`` for anything not a job id."""
    match = JOB_ID.fullmatch(job_id)
    if match is None:
        raise ChainError("job_unknown", f"{job_id[:40]!r} is not an index job id")
    return int(match["esaf"])


def wire_tag(job_id: str) -> str:
    return f"web-{job_id.partition('-')[2]}"
