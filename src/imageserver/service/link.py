"""The messages between the manager and a worker, over the worker's DEALER socket.

```
worker  → manager   [HELLO]                                  connected, not yet welcome
manager → worker    [WELCOME, grant JSON]                    what this worker may use
worker  → manager   [FAILED, code, error, reason, message]   could not become its identity
manager → worker    [REQUEST, request id, deadline, payload] deadline: CLOCK_MONOTONIC ns
worker  → manager   [REPLY, request id, timings, SUCCESS, part…]
worker  → manager   [REPLY, request id, timings, FAILURE, code, error, reason, message, fallback…]
```

``timings`` is where the worker's time went (`imageserver.stage_times`: a small JSON object
of nanoseconds per render stage and the cache source, or empty); the manager observes it
into its metrics, and ignores one that is too long or malformed.

The grant holds only this worker's own secrets (its ESAF group's Redis user), so nothing
that could reach another ESAF ever passes through the zygote that forks every worker. The
manager treats everything a worker sends as untrusted: a malformed message is dropped, and a
reply is accepted only for a request that was sent to that very worker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imageserver import stage_times
from imageserver.errors import LinkError
from imageserver.service.reply import Failure, Reply, Success
from imageserver.stage_times import StageTimes

HELLO = b"hello"
WELCOME = b"welcome"
FAILED = b"failed"
REQUEST = b"request"
REPLY = b"reply"
SUCCESS = b"ok"
FAILURE = b"err"
MAX_TEXT_BYTES = 8192


@dataclass(frozen=True)
class Job:
    """A request as the worker receives it."""

    request_id: bytes
    deadline_ns: int
    payload: bytes


def welcome(grant: dict[str, Any]) -> list[bytes]:
    return [WELCOME, json.dumps(grant).encode()]


def read_grant(frames: Sequence[bytes]) -> dict[str, Any]:
    if len(frames) != 2 or frames[0] != WELCOME:
        raise LinkError("expected a welcome")
    grant = json.loads(frames[1])
    if not isinstance(grant, dict):
        raise LinkError("the grant is not a JSON object")
    return grant


def request(job: Job) -> list[bytes]:
    return [REQUEST, job.request_id, job.deadline_ns.to_bytes(8, "big"), job.payload]


def read_request(frames: Sequence[bytes]) -> Job:
    if len(frames) != 4 or frames[0] != REQUEST or len(frames[2]) != 8:
        raise LinkError(f"not a request ({len(frames)} frames)")
    return Job(bytes(frames[1]), int.from_bytes(frames[2], "big"), bytes(frames[3]))


def reply(request_id: bytes, answer: Reply, timings: bytes = b"") -> list[bytes]:
    """``timings``: `stage_times.finish`'s frame for this job."""
    if isinstance(answer, Success):
        return [REPLY, request_id, timings, SUCCESS, *answer.parts]
    return [REPLY, request_id, timings, FAILURE, *_failure_fields(answer), *answer.fallback]


def failed(failure: Failure) -> list[bytes]:
    return [FAILED, *_failure_fields(failure)]


def read_reply(frames: Sequence[bytes]) -> tuple[bytes, Reply, StageTimes | None]:
    """(request id, reply, timings) from a worker's REPLY message; LinkError if the message
    is malformed, timings None if only they are."""
    if len(frames) < 4 or frames[0] != REPLY:
        raise LinkError("not a reply")
    request_id, kind, rest = bytes(frames[1]), frames[3], [bytes(f) for f in frames[4:]]
    times = stage_times.parse(bytes(frames[2]))
    if kind == SUCCESS:
        return request_id, Success(tuple(rest)), times
    if kind == FAILURE and len(rest) >= 4:
        return request_id, _read_failure(rest[:4], tuple(rest[4:])), times
    raise LinkError("a reply that is neither success nor failure")


def read_failed(frames: Sequence[bytes]) -> Failure:
    if len(frames) != 5 or frames[0] != FAILED:
        raise LinkError("not a start failure")
    return _read_failure([bytes(f) for f in frames[1:]], ())


def _failure_fields(failure: Failure) -> list[bytes]:
    return [
        failure.code.encode(),
        failure.error.encode(),
        failure.reason.encode(),
        failure.message.encode("utf-8", errors="replace"),
    ]


def _read_failure(fields: list[bytes], fallback: tuple[bytes, ...]) -> Failure:
    if any(len(field) > MAX_TEXT_BYTES for field in fields):
        raise LinkError("a failure field is too long")
    code, error, reason, message = (f.decode("utf-8", errors="replace") for f in fields)
    return Failure(code=code, message=message, error=error, reason=reason, fallback=fallback)
