"""SharedCache: entries in Redis, read by every worker of the same ESAF group on every node.

Values are binary (`codec`), expire after ``ttl_s`` and live under ``<prefix>:<gid>:``, the
only names the worker's Redis ACL user may touch (`acl`). When many processes want the same
missing entry, one claims it with ``SET <name>:claim NX PX`` and computes; the others poll
for the value until it appears, the claim disappears (the holder failed: they claim in turn)
or ``claim_s`` passes (they compute themselves), so a crashed holder delays others by at most
``claim_s`` and blocks no one. Redis gone, slow or refusing us never fails a request: the
link logs once, stays off for ``retry_s`` and then tries again.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (socket needs it for host names; see the note below)
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

import redis

from imageserver.errors import CacheUnavailableError
from imageserver.redis_connect import (
    NO_CLIENT_SETINFO,
    RedisTarget,
    close_redis,
    connect_redis,
)

if TYPE_CHECKING:  # the manager provisions through this module without the imaging stack
    from imageserver.cache.codec import Codec
    from imageserver.cache.keys import CacheKey

log = logging.getLogger(__name__)

V = TypeVar("V")
T = TypeVar("T")

FIRST_POLL_S = 0.001
MAX_POLL_S = 0.025

# Workers drop root's rights after forking, and may then be unable to read the Python
# installation: every module a connection needs is imported here, before the fork, including
# the "idna" codec that socket.getaddrinfo looks up by name on first use (and, through
# `redis_connect`, redis.sentinel, for a worker that follows a Sentinel primary).


class RedisLink:
    """A Redis connection pool with short timeouts and a breaker that remembers failures.

    ``run`` raises CacheUnavailableError (with the Redis error as its cause) when Redis fails
    or when a failure less than ``retry_s`` ago turned the link off; the change of state is
    logged once each way, not once per request.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str, retry_s: float, label: str = "shared cache"
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retry_s = retry_s
        self.label = label
        self._down_until = 0.0
        self._is_down = False
        self._lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        target: RedisTarget | str,
        *,
        prefix: str,
        timeout_s: float,
        retry_s: float,
        username: str | None = None,
        password: str | None = None,
    ) -> RedisLink:
        """A link to ``target`` (a URL, or a Sentinel primary that a failover moves); no
        connection is made until first use."""
        client = connect_redis(
            RedisTarget(target) if isinstance(target, str) else target,
            timeout_s=timeout_s,
            username=username,
            password=password,
            retry_on_timeout=False,
            health_check_interval=0,
            **NO_CLIENT_SETINFO,
        )
        return cls(client, prefix=prefix, retry_s=retry_s)

    @property
    def is_up(self) -> bool:
        return not self._is_down

    def name(self, key: CacheKey) -> str:
        return key.redis_name(self.prefix)

    def run(self, operation: Callable[[redis.Redis], T]) -> T:
        if self._is_down and time.monotonic() < self._down_until:
            raise CacheUnavailableError(f"{self.label} is off after a recent failure")
        try:
            result = operation(self.client)
        except Exception as exc:  # the cache's boundary: no client failure may fail a request
            self._failed(exc)
            raise CacheUnavailableError(f"{self.label} unavailable: {exc}") from exc
        if self._is_down:
            with self._lock:
                if self._is_down:
                    self._is_down = False
                    log.info("%s is available again", self.label)
        return result

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self.retry_s
            if not self._is_down:
                self._is_down = True
                log.warning(
                    "%s unavailable (%s: %s); serving without it, next try in %g s",
                    self.label,
                    type(exc).__name__,
                    exc,
                    self.retry_s,
                )

    def close(self) -> None:
        close_redis(self.client)


def public_url(url: str) -> str:
    """``url`` without user name and password: what a worker may be told."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "&".join(
        pair for pair in parts.query.split("&") if pair and not pair.startswith("password=")
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


@dataclass
class SharedStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    claims: int = 0
    waited_hits: int = 0
    invalid: int = 0
    unavailable: int = 0


class _Claimed:
    """Marker: this process holds the claim and must compute, store and release."""


class _Alone:
    """Marker: compute without the shared tier (unavailable) or after waiting too long."""

    def __init__(self, may_store: bool) -> None:
        self.may_store = may_store


class WriteBehind:
    """One background thread that stores computed values, so a reply never waits for Redis.

    Encoding and sending a 1024-wide view costs 2–3 ms; the computing request returns at once
    and other processes polling for the value get it a moment later. When ``max_pending``
    writes are queued (Redis slow), the next one runs in the caller instead.
    """

    def __init__(self, max_pending: int = 16) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cache-write", daemon=True)
                self._thread.start()
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            job()

    def flush(self) -> None:
        """Wait until every submitted write is done (tests, shutdown)."""
        self._jobs.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            finally:
                self._jobs.task_done()


class SharedCache(Generic[V]):
    """Redis-backed cache of one kind of value, with cross-process single-flight.

    With a ``writer``, values computed by ``get_or_compute`` are stored (and the claim
    released) in its thread; without one, before returning.
    """

    def __init__(
        self,
        link: RedisLink,
        codec: Codec[V],
        *,
        ttl_s: int,
        claim_s: float,
        writer: WriteBehind | None = None,
    ) -> None:
        self.link = link
        self.codec = codec
        self.ttl_s = ttl_s
        self.claim_s = claim_s
        self.writer = writer
        self.stats = SharedStats()
        self._stats_lock = threading.Lock()

    def get(self, key: CacheKey) -> V | None:
        try:
            return self._get(self.link.name(key))
        except CacheUnavailableError:
            self._count("unavailable")
            return None

    def put(self, key: CacheKey, value: V) -> bool:
        """Store ``value`` with the TTL; False when the shared tier is unavailable."""
        try:
            self._put(self.link.name(key), value)
        except CacheUnavailableError:
            self._count("unavailable")
            return False
        return True

    def get_or_compute(self, key: CacheKey, compute: Callable[[], V], *, claim: bool = True) -> V:
        """The shared value, else ``compute()`` (once across processes when Redis allows).

        ``claim=False`` skips the claim, for values this process can compute cheaply (a view
        of a frame it holds): a miss is computed at once and stored.
        """
        name = self.link.name(key)
        token = os.urandom(12).hex()
        try:
            if claim:
                found = self._find_or_claim(name, f"{name}:claim", token)
            else:
                found = self._get(name) or _Alone(may_store=True)
        except CacheUnavailableError:
            self._count("unavailable")
            found = _Alone(may_store=False)
        if isinstance(found, _Alone):
            value = compute()
            if found.may_store:
                self._store(key, value, None)
            return value
        if isinstance(found, _Claimed):
            try:
                value = compute()
            except BaseException:
                self._release(f"{name}:claim", token)
                raise
            self._store(key, value, (f"{name}:claim", token))
            return value
        return found

    def _store(self, key: CacheKey, value: V, claim: tuple[str, str] | None) -> None:
        def store() -> None:
            self.put(key, value)
            if claim is not None:
                self._release(*claim)

        if self.writer is None:
            store()
        else:
            self.writer.submit(store)

    # -- steps ---------------------------------------------------------------------------------

    def _find_or_claim(self, name: str, claim: str, token: str) -> V | _Claimed | _Alone:
        value = self._get(name)
        if value is not None:
            return value
        claim_ms = max(1, int(self.claim_s * 1000))
        deadline = time.monotonic() + self.claim_s
        pause_s = FIRST_POLL_S
        while time.monotonic() <= deadline:
            if self.link.run(lambda r: r.set(claim, token, nx=True, px=claim_ms)):
                self._count("claims")
                value = self._get(name)  # finished between our miss and our claim?
                if value is not None:
                    self._release(claim, token)
                    return value
                return _Claimed()
            value, is_claimed = self._poll(name, claim)
            if value is not None:
                self._count("waited_hits")
                return value
            if not is_claimed:
                continue  # the holder gave up or died: claim it ourselves
            time.sleep(pause_s)
            pause_s = min(pause_s * 1.5, MAX_POLL_S)
        return _Alone(may_store=True)  # the holder is slow: do not wait longer

    def _poll(self, name: str, claim: str) -> tuple[V | None, bool]:
        def get_both(client: redis.Redis) -> list[object]:
            pipe = client.pipeline(transaction=False)
            pipe.get(name)
            pipe.exists(claim)
            return list(pipe.execute())

        data, exists = self.link.run(get_both)
        value = self._decoded(name, data) if isinstance(data, bytes) else None
        return value, bool(exists)

    def _get(self, name: str) -> V | None:
        data = self.link.run(lambda r: r.get(name))
        if not isinstance(data, bytes):
            self._count("misses")
            return None
        return self._decoded(name, data)

    def _decoded(self, name: str, data: bytes) -> V | None:
        try:
            value = self.codec.decode(data)
        except CacheUnavailableError as exc:
            self._count("invalid")
            log.warning("ignoring shared cache entry %s: %s", name, exc)
            return None
        self._count("hits")
        return value

    def _put(self, name: str, value: V) -> None:
        data = self.codec.encode(value)
        self.link.run(lambda r: r.set(name, data, ex=self.ttl_s))
        self._count("writes")

    def _release(self, claim: str, token: str) -> None:
        """Drop our claim if it is still ours (it may have expired and been taken since)."""
        try:
            if self.link.run(lambda r: r.get(claim)) == token.encode():
                self.link.run(lambda r: r.delete(claim))
        except CacheUnavailableError:
            self._count("unavailable")

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)
