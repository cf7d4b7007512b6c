"""Where a request's session token comes from, and how many of a session's requests run.

The token is the web tier's signed-session key (the wire's ``pid``); the gateway never
checks it itself, the manager does on every request. It travels in an HttpOnly cookie set
by ``/login`` or in ``Authorization: Bearer``; it never appears in a URL after login or in
a log line (`token_hash`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request

from imageserver.errors import BusyError
from imageserver.service.requests import token_hash

COOKIE_NAME = "imageserver_session"
MAX_TOKEN_LENGTH = 4096


@functools.lru_cache(maxsize=1024)
def session_hash(token: str) -> str:
    """`token_hash`, remembered: the access log names the session of every request."""
    return token_hash(token)


def session_token(request: Request) -> str | None:
    """The bearer token if one is sent, else the session cookie; None when neither is usable."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    token = value if scheme.lower() == "bearer" else request.cookies.get(COOKIE_NAME, "")
    return usable_token(token)


def usable_token(text: str) -> str | None:
    """A token as sent (stripped), or None when it cannot be one: empty, too long, unprintable."""
    token = text.strip()
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isprintable():
        return None
    return token


@dataclass
class _Turns:
    semaphore: asyncio.Semaphore
    users: int = 0


@dataclass
class SessionLimiter:
    """At most ``concurrency`` requests of a session in the chain, ``queue`` more waiting.

    One browser tab sweeping frames cannot fill the workers' pools for everyone else; the
    viewer cancels what it no longer needs, and a cancelled request leaves its place.
    """

    concurrency: int
    queue: int
    _turns: dict[str, _Turns] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def turn(self, token: str) -> AsyncIterator[bool]:
        """Wait for a turn of this session; yields whether it had to wait."""
        turns = self._turns.get(token)
        if turns is None:
            turns = self._turns[token] = _Turns(asyncio.Semaphore(self.concurrency))
        if turns.users >= self.concurrency + self.queue:
            raise BusyError(f"more than {self.queue} requests of this session are waiting")
        waited = turns.semaphore.locked()
        turns.users += 1
        try:
            async with turns.semaphore:
                yield waited
        finally:
            turns.users -= 1
            if turns.users == 0:
                del self._turns[token]

    def in_use(self) -> int:
        return sum(turns.users for turns in self._turns.values())
