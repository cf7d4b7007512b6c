"""The gateway's one connection to the chain: an asyncio DEALER with correlation ids.

Every HTTP request becomes one wire request on the same socket, so any number can be in
flight without a thread each. A request goes out as ``[id, "", JSON, "typed"]`` (the proxy
prepends the gateway's identity, the manager answers behind the same envelope); the reply
comes back as ``[id, "", frames…]`` and resolves the future waiting on that id. A reply
that arrives after its request gave up is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from imageserver.transports.frames import TYPED_MARK

log = logging.getLogger(__name__)


class ChainError(Exception):
    """A request the chain refused or could not answer, with the code of `errors.py`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ChainReply:
    """A successful reply: the job echo, the JSON frame after it, and any binary part."""

    job: dict[str, Any]
    document: bytes
    data: bytes | None

    def json(self) -> Any:
        return json.loads(self.document) if self.document else {}


class ChainClient:
    """One DEALER socket to the proxy's front; use from one event loop."""

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None) -> None:
        self.endpoint = endpoint
        self._context = context or zmq.asyncio.Context()
        self._own_context = context is None
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)  # no proxy: refuse at once, do not queue
        self._socket.connect(endpoint)
        self._ids = itertools.count(1)
        self._waiting: dict[bytes, asyncio.Future[list[bytes]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def request(self, job: dict[str, Any], *, timeout_s: float) -> ChainReply:
        """Send one wire request and wait for its reply; ChainError for every failure."""
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())
        request_id = next(self._ids).to_bytes(8, "big")
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            payload = json.dumps(job, separators=(",", ":")).encode()
            try:
                await self._socket.send_multipart(
                    [request_id, b"", payload, TYPED_MARK], flags=zmq.NOBLOCK
                )
            except zmq.Again:
                raise ChainError(
                    "worker_failed", "the image service is not reachable; please retry"
                ) from None
            try:
                frames = await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise ChainError(
                    "timeout", f"the image service did not answer within {timeout_s:g} s"
                ) from None
        finally:
            self._waiting.pop(request_id, None)
        return _decode(frames)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._socket.close(0)
        if self._own_context:
            self._context.term()

    async def _read_replies(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=True)
            if len(frames) < 2 or frames[1] != b"":
                log.warning("gateway: a reply without its envelope was dropped")
                continue
            future = self._waiting.get(frames[0])
            if future is not None and not future.done():
                future.set_result(list(frames[2:]))


def _decode(body: list[bytes]) -> ChainReply:
    """Success is ``["", job, document, data?]``; a typed error ``[text, {"code"}]``."""
    if not body:
        raise ChainError("internal", "the image service sent an empty reply")
    if body[0] != b"":
        message = body[0].decode("utf-8", errors="replace")
        code = "internal"
        if len(body) > 1:
            with contextlib.suppress(ValueError, AttributeError):
                code = str(json.loads(body[1]).get("code", code))
        raise ChainError(code, message)
    job = json.loads(body[1]) if len(body) > 1 and body[1] else {}
    document = body[2] if len(body) > 2 else b""
    data = body[3] if len(body) > 3 else None
    return ChainReply(job=job, document=document, data=data)
