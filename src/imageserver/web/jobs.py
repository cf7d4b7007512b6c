"""Index jobs started over HTTP: one wire `index` request each, followed by its id.

An index job takes a minute or more, longer than a browser waits for one response, so
`POST /api/v1/jobs/index` starts the wire request in the background and answers at once
with the job's id; `GET /api/v1/jobs/{id}` says how it stands and, at the end, gives the
indexer's result; `POST /api/v1/jobs/{id}/cancel` sends the wire `cancel` with the job's
tag. The table lives in the gateway's memory, per session: a job is visible only to the
session that started it, and a finished one is forgotten after `FINISHED_KEEP_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imageserver.errors import BusyError, ChainError
from imageserver.web.chain_client import ChainClient
from imageserver.web.sessions import session_hash

MAX_JOBS_PER_SESSION = 16
FINISHED_KEEP_S = 3600.0


@dataclass
class IndexJob:
    id: str
    session: str
    """The starting session's short hash (never the token)."""
    esaf: int
    inputs: dict[str, Any]
    state: str = "running"
    """"running", "done" (the indexer's result, which may be an error result), "failed"
    (the chain refused or could not run it) or "cancelled"."""
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "esaf": self.esaf,
            "inputs": self.inputs,
            "started": self.started,
            "finished": self.finished,
        }
        if self.result is not None:
            document["result"] = self.result
        if self.error is not None:
            document["error"] = self.error
        return document


class JobTable:
    """The index jobs of every session, started on one chain client."""

    def __init__(self, client_of: Callable[[], ChainClient | None], timeout_s: float) -> None:
        self._client_of = client_of
        """The gateway's `ChainClient`, made when the app starts."""
        self._timeout_s = timeout_s
        self._jobs: dict[str, IndexJob] = {}

    def start(self, token: str, esaf: int, inputs: dict[str, Any]) -> IndexJob:
        """Send the wire request in the background; BusyError beyond the session's share."""
        self._forget_old()
        session = session_hash(token)
        running = [
            job for job in self._jobs.values() if job.session == session and job.finished is None
        ]
        if len(running) >= MAX_JOBS_PER_SESSION:
            raise BusyError(f"this session already runs {MAX_JOBS_PER_SESSION} index jobs")
        job = IndexJob(id=secrets.token_hex(8), session=session, esaf=esaf, inputs=inputs)
        self._jobs[job.id] = job
        wire = {"type": "index", "pid": token, "esaf": esaf, "tag": f"web-{job.id}", **inputs}
        job.task = asyncio.get_running_loop().create_task(self._run(job, wire))
        return job

    def get(self, token: str, job_id: str) -> IndexJob | None:
        job = self._jobs.get(job_id)
        if job is None or job.session != session_hash(token):
            return None  # another session's job is as unknown as a made-up id
        return job

    async def cancel(self, token: str, job: IndexJob) -> None:
        client = self._client()
        wire = {"type": "cancel", "pid": token, "esaf": job.esaf, "tag": f"web-{job.id}"}
        await client.request(wire, timeout_s=30.0)

    async def close(self) -> None:
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task

    async def _run(self, job: IndexJob, wire: dict[str, Any]) -> None:
        client = self._client()
        try:
            reply = await client.request(wire, timeout_s=self._timeout_s)
            job.result = json.loads(reply.document) if reply.document else {}
            cancelled = (job.result.get("error") or {}).get("code") == "cancelled"
            job.state = "cancelled" if cancelled else "done"
        except ChainError as exc:
            job.state = "cancelled" if exc.wire_code == "cancelled" else "failed"
            job.error = {"code": exc.wire_code, "message": exc.message}
        except ValueError:
            job.state = "failed"
            job.error = {"code": "internal", "message": "the indexer's result is not JSON"}
        finally:
            job.finished = time.time()

    def _client(self) -> ChainClient:
        client = self._client_of()
        assert client is not None, "the app has not started"
        return client

    def _forget_old(self) -> None:
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if job.finished is not None and now - job.finished > FINISHED_KEEP_S:
                del self._jobs[job_id]
