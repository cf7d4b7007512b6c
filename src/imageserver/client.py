"""A small client for the legacy protocol: one REQ request, its reply frames, a timeout.

REQ sockets allow one request in flight and wedge if a reply never comes, so each call uses
a fresh socket with LINGER 0 and a receive timeout; a timed-out socket is thrown away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import zmq


class ReplyTimeoutError(TimeoutError):
    """No reply within the timeout (the server is down or overloaded)."""


@dataclass(frozen=True)
class Reply:
    """A decoded reply: ``error`` is the text of a one-frame error reply, else None."""

    frames: list[bytes]

    @property
    def error(self) -> str | None:
        if len(self.frames) == 1:
            return self.frames[0].decode("utf-8", errors="replace")
        return None

    @property
    def job(self) -> dict[str, Any]:
        return dict(json.loads(self.frames[1])) if self.error is None else {}

    @property
    def meta(self) -> dict[str, Any]:
        if self.error is not None or len(self.frames) < 3 or not self.frames[2]:
            return {}
        return dict(json.loads(self.frames[2]))

    @property
    def image(self) -> bytes | None:
        return self.frames[3] if self.error is None and len(self.frames) >= 4 else None


def send_request(
    endpoint: str,
    request: dict[str, Any],
    *,
    timeout_s: float = 30.0,
    context: zmq.Context | None = None,
) -> Reply:
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise ReplyTimeoutError(f"no reply from {endpoint} within {timeout_s:g} s")
        return Reply(sock.recv_multipart())
    finally:
        sock.close(0)
