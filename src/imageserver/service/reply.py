"""The typed reply every job and every refusal ends in, before a transport renders it.

A job returns `Success` (its parts: job echo, meta JSON, image) or `Failure` (the error's
stable ``code`` from `errors.py`, its class, the audit ``reason`` and the user's message).
Transports decide the bytes: the ZeroMQ transport renders the legacy frames
(`transports.frames.legacy_frames`), a future HTTP transport maps ``code`` to a status. A
jpeg that cannot be made keeps the legacy light-grey image as its ``fallback``: legacy
clients get that, others get the error.
"""

from __future__ import annotations

from dataclasses import dataclass

from imageserver.errors import ImageServerError


@dataclass(frozen=True)
class Success:
    """What a request produced: the legacy reply parts after the empty error slot."""

    parts: tuple[bytes, ...]


@dataclass(frozen=True)
class Failure:
    """Why a request produced nothing: one class of the error tree, named by its code."""

    code: str
    message: str
    error: str
    reason: str
    fallback: tuple[bytes, ...] = ()
    """Legacy success-shaped parts to send instead of the error text (the grey jpeg)."""

    @classmethod
    def of(cls, exc: ImageServerError, fallback: tuple[bytes, ...] = ()) -> Failure:
        return cls(
            code=exc.code,
            message=str(exc) or exc.code,
            error=type(exc).__name__,
            reason=exc.reason,
            fallback=fallback,
        )


Reply = Success | Failure
