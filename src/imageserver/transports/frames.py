"""Legacy multipart frames: the only place that knows their order (reference §1.4).

A request as the manager's ROUTER receives it is ``[routing ids…] [""] [JSON] [extra…]``:
the envelope is every frame up to and including the first empty one (no hop limit). Replies
travel back behind the same envelope: an error is one text frame; success starts with an
empty frame (``["", job, meta, jpeg]`` for jpeg, ``["", job, meta]`` for spots and meta).

A client that sends the extra frame ``typed`` after its JSON (the HTTP gateway) gets errors
as two frames, the text and ``{"code", "error"}``, so it can answer with the right status;
legacy clients never send it and see no change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from imageserver.service.reply import Reply, Success

MAX_ERROR_BYTES = 4094
"""The legacy error buffer: longer texts are cut, clients never saw more."""
TYPED_MARK = b"typed"
"""The extra request frame by which a client asks for typed error replies."""


@dataclass(frozen=True)
class Incoming:
    """A request split into the envelope to answer on and the payload to work on.

    ``problem`` is set (and ``payload`` empty) when the frames are not a valid request; the
    envelope is then the best route back: every frame but the last when there is no
    delimiter, so a DEALER peer behind the proxy still gets its one reply.
    """

    envelope: tuple[bytes, ...]
    payload: bytes
    extra_frames: int = 0
    problem: str | None = None
    typed: bool = False
    """The client asked for typed error replies (`TYPED_MARK`)."""


def split_request(frames: Sequence[bytes]) -> Incoming:
    for index, frame in enumerate(frames):
        if frame == b"":
            envelope = tuple(frames[: index + 1])
            rest = frames[index + 1 :]
            if not rest:
                return Incoming(envelope, b"", problem="request has no payload after the delimiter")
            typed = any(bytes(frame) == TYPED_MARK for frame in rest[1:])
            return Incoming(envelope, bytes(rest[0]), extra_frames=len(rest) - 1, typed=typed)
    envelope = tuple(frames[:-1]) if len(frames) > 1 else tuple(frames)
    return Incoming(envelope, b"", problem="request has no empty delimiter frame")


def error_frames(text: str) -> list[bytes]:
    """A legacy error reply body: one plain-text frame, cut to the legacy buffer size."""
    data = text.encode("utf-8", errors="replace")
    if len(data) > MAX_ERROR_BYTES:
        data = data[:MAX_ERROR_BYTES].decode("utf-8", errors="ignore").encode("utf-8")
    return [data or b"error"]


def typed_error_frames(text: str, code: str, error: str) -> list[bytes]:
    """A typed error reply body: the legacy text frame, then the code and class as JSON."""
    return [*error_frames(text), json.dumps({"code": code, "error": error}).encode()]


def success_frames(*parts: bytes) -> list[bytes]:
    """A legacy success reply body: the empty error slot, then the parts."""
    return [b"", *parts]


def legacy_frames(reply: Reply) -> list[bytes]:
    """The legacy reply body of a typed reply: the parts, the fallback parts or the error text."""
    if isinstance(reply, Success):
        return success_frames(*reply.parts)
    if reply.fallback:
        return success_frames(*reply.fallback)
    return error_frames(reply.message)


def typed_frames(reply: Reply) -> list[bytes]:
    """The reply body for a client that asked for typed errors: no fallback image."""
    if isinstance(reply, Success):
        return success_frames(*reply.parts)
    return typed_error_frames(reply.message, reply.code, reply.error)


def reply_frames(reply: Reply, *, typed: bool) -> list[bytes]:
    return typed_frames(reply) if typed else legacy_frames(reply)
