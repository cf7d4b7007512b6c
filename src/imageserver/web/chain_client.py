"""The gateway's one connection to the chain: a DEALER with correlation ids on the event loop.

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
import time
from dataclasses import dataclass
from typing import Any, cast

import zmq

from imageserver import metrics
from imageserver.errors import ChainError
from imageserver.transports.frames import TYPED_MARK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainReply:
    """A successful reply: the job echo, the JSON frame after it, and any binary part."""

    job: dict[str, Any]
    document: bytes
    data: bytes | None

    def json(self) -> Any:
        return json.loads(self.document) if self.document else {}


class ChainClient:
    """One DEALER socket to the proxy's front, driven by the event loop's reader callback.

    The socket is a plain (blocking-capable) one used only with NOBLOCK from the loop's
    thread: its file descriptor wakes the loop, and every wake-up drains all replies. ZeroMQ
    signals edge-triggered, and a send may consume the edge, so after each send the socket's
    events are checked once more. This costs a fraction of what zmq.asyncio's futures do per
    message.
    """

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._context = context or zmq.Context()
        self._own_context = context is None
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)  # no proxy: refuse at once, do not queue
        self._socket.connect(endpoint)
        self._fd = int(cast(int, self._socket.getsockopt(zmq.FD)))
        self._ids = itertools.count(1)
        self._waiting: dict[bytes, asyncio.Future[list[bytes]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(self, job: dict[str, Any], *, timeout_s: float) -> ChainReply:
        """Send one wire request and wait for its reply; ChainError for every failure.
        Each is counted with its wait and outcome (`metrics.gateway_chain_request`)."""
        started = time.perf_counter()
        code: str | None = "cancelled"  # unless it ends below: the caller gave up
        try:
            reply = await self._request(job, timeout_s=timeout_s)
            code = None
            return reply
        except ChainError as exc:
            code = exc.wire_code
            raise
        finally:
            kind = job.get("type")
            seconds = time.perf_counter() - started
            metrics.gateway_chain_request(kind if isinstance(kind, str) else None, code, seconds)

    async def _request(self, job: dict[str, Any], *, timeout_s: float) -> ChainReply:
        loop = self._watch()
        request_id = next(self._ids).to_bytes(8, "big")
        future: asyncio.Future[list[bytes]] = loop.create_future()
        self._waiting[request_id] = future
        try:
            payload = json.dumps(job, separators=(",", ":")).encode()
            try:
                self._socket.send_multipart(
                    [request_id, b"", payload, TYPED_MARK], flags=zmq.NOBLOCK
                )
            except zmq.Again:
                raise ChainError(
                    "worker_failed", "the image service is not reachable; please retry"
                ) from None
            if cast(int, self._socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                loop.call_soon(self._drain)
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
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self._socket.close(0)
        if self._own_context:
            self._context.term()

    def _watch(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            loop.add_reader(self._fd, self._drain)
            self._loop = loop
        return loop

    def _drain(self) -> None:
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2 or frames[1] != b"":
                log.warning("gateway: a reply without its envelope was dropped")
                continue
            future = self._waiting.get(frames[0])
            if future is not None and not future.done():
                future.set_result(frames[2:])


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
