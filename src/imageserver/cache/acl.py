"""CacheAccess: one Redis ACL user per ESAF group, provisioned by the manager for its workers.

A key prefix alone would not keep a compromised worker out of another ESAF's entries: it
could simply ask for them. So the manager (root, holding the administrative URL) creates, for
each ESAF group it starts a worker for, the Redis user ``<prefix>-g<gid>`` that may run only
GET, SET, DEL, EXISTS, PING and SELECT, on names matching ``<prefix>:<gid>:*`` only, and gives
the worker that user's password in its spec (never the administrative credentials).

Passwords are HMACs of the gid under a secret made when the manager starts; each manager
*adds* its password (``>pw``), so managers on several nodes share one user, and removes it when
it stops. A background thread re-applies every user every ``refresh_s`` (2 s), so a Redis that
restarted (and forgot its users) serves workers again within seconds.

ACL users are not replicated: with Sentinel, every user is applied to the primary and to every
replica the sentinels report, so a replica promoted by a failover already knows them (and one
that restarted learns them again at the next refresh). Workers get the sentinels' addresses
in their grant and follow a failover themselves.

This is isolation only if strangers cannot log in as Redis's ``default`` user: the manager
checks and, if the Redis is open, warns — or, with ``require_isolation``, gives workers no
shared tier at all.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import redis

from imageserver import metrics
from imageserver.cache.shared import RedisLink, public_url
from imageserver.config import CacheSettings
from imageserver.errors import CacheUnavailableError
from imageserver.redis_connect import (
    NO_CLIENT_SETINFO,
    Address,
    RedisTarget,
    close_redis,
    connect_node,
    connect_redis,
    replica_addresses,
)

log = logging.getLogger(__name__)

WORKER_COMMANDS = ("get", "set", "del", "exists", "ping", "select")
REFRESH_S = 2.0


class HasGid(Protocol):
    """What the manager passes for a new worker (a `service.identity.Identity`)."""

    @property
    def gid(self) -> int: ...


def user_name(prefix: str, gid: int) -> str:
    return f"{prefix}-g{gid}"


def key_pattern(prefix: str, gid: int) -> str:
    return f"{prefix}:{gid}:*"


class CacheAccess:
    """The manager's side of the shared cache: ACL users and the workers' connection details."""

    def __init__(
        self, settings: CacheSettings, *, secret: bytes | None = None, refresh_s: float = REFRESH_S
    ) -> None:
        self.settings = settings
        self.refresh_s = refresh_s
        self._secret = secret if secret is not None else os.urandom(32)
        self._gids: set[int] = set()
        self._provisioned: set[int] = set()
        self._is_open: bool | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin: RedisLink | None = None
        self._replicas: dict[Address, redis.Redis] = {}
        self._failing_replicas: set[Address] = set()
        self._target = RedisTarget.of(settings)
        if settings.redis_url:
            self._admin = RedisLink.connect(
                self._target,
                prefix=settings.key_prefix,
                timeout_s=settings.redis_timeout_s,
                retry_s=settings.redis_retry_s,
            )
            self._admin.label = "shared cache (manager)"

    def password(self, gid: int) -> str:
        return hmac.new(self._secret, f"gid:{gid}".encode(), hashlib.sha256).hexdigest()

    def worker_extras(self, identity: HasGid) -> dict[str, Any]:
        """The ``cache`` entry of a worker's spec; empty when it may not use the shared tier.

        Called by the manager's loop when it starts a worker (rarely): it registers the gid and
        (re)applies its user now if Redis answers within its timeout, else leaves that to the
        refresh thread (the worker retries its connection).
        """
        if self._admin is None:
            return {}
        gid = identity.gid
        with self._lock:
            self._gids.add(gid)
        if self._admin.is_up and self.provision(gid) and self._is_open is None:
            self._check_open()
        if self._is_open and self.settings.require_isolation:
            return {}
        public = self._target.with_url(public_url(self.settings.redis_url))
        return {
            "cache": {
                **public.to_table(),
                "user": user_name(self.settings.key_prefix, gid),
                "password": self.password(gid),
            }
        }

    def provision(self, gid: int) -> bool:
        """Create or refresh the ACL user of ``gid`` (on the primary and every replica); False
        when the primary did not accept it."""
        return self._provision([gid]) == 1

    def provision_all(self) -> int:
        """Re-apply every known user (Redis may have restarted, or a failover happened); how
        many the primary accepted."""
        with self._lock:
            gids = sorted(self._gids)
        accepted = self._provision(gids)
        if accepted:
            self._check_open()
        return accepted

    def _provision(self, gids: list[int]) -> int:
        if self._admin is None:
            return 0
        accepted: list[tuple[str, ...]] = []
        for gid in gids:
            command = self._set_user(gid)
            try:
                self._admin.run(functools.partial(_execute, command=command))
            except CacheUnavailableError:
                metrics.redis_error("cache")
                continue
            with self._lock:
                self._provisioned.add(gid)
            accepted.append(command)
        if accepted:
            self._run_on_replicas(accepted)
        return len(accepted)

    def _set_user(self, gid: int) -> tuple[str, ...]:
        prefix = self.settings.key_prefix
        rules = ["on", f">{self.password(gid)}", "resetkeys", f"~{key_pattern(prefix, gid)}"]
        rules += ["resetchannels", "-@all", *(f"+{command}" for command in WORKER_COMMANDS)]
        return ("ACL", "SETUSER", user_name(prefix, gid), *rules)

    def _run_on_replicas(self, commands: Sequence[tuple[str, ...]]) -> None:
        """Run ``commands`` on every replica the sentinels report (none without Sentinel);
        a replica that refuses is logged once and tried again next time."""
        assert self._admin is not None
        for address in replica_addresses(self._admin.client):
            with self._lock:
                client = self._replicas.get(address)
                if client is None:
                    client = connect_node(
                        self._target,
                        address,
                        socket_timeout=self.settings.redis_timeout_s,
                        socket_connect_timeout=self.settings.redis_timeout_s,
                    )
                    self._replicas[address] = client
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            try:
                pipe.execute()
            except redis.RedisError as exc:
                if address not in self._failing_replicas:
                    self._failing_replicas.add(address)
                    log.warning(
                        "cache replica %s:%d did not take the ESAF users (%s); it would"
                        " refuse workers if promoted; trying again every %g s",
                        *address,
                        exc,
                        self.refresh_s,
                    )
                continue
            self._failing_replicas.discard(address)

    def _check_open(self) -> None:
        """Whether a client without credentials gets in; warn (once per change) if so."""
        probe = connect_redis(
            self._target.with_url(public_url(self.settings.redis_url)),
            timeout_s=self.settings.redis_timeout_s,
            **NO_CLIENT_SETINFO,
        )
        try:
            is_open = bool(probe.ping())
        except redis.RedisError:
            is_open = False
        finally:
            close_redis(probe)
        if is_open and not self._is_open:
            if self.settings.require_isolation:
                log.error(
                    "the cache Redis lets clients in without a password, so ESAFs cannot be"
                    " kept apart: workers get no shared cache (require_isolation is set)"
                )
            else:
                log.warning(
                    "the cache Redis lets clients in without a password: ESAF isolation of"
                    " the shared cache holds only against honest workers; give its default"
                    " user a password (docs/configuration.md, [cache])"
                )
        self._is_open = is_open

    # -- refresh thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Re-apply the users every ``refresh_s`` in a daemon thread (after any fork)."""
        if self._admin is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._refresh, name="cache-acl", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.provision_all()

    def close(self) -> None:
        """Stop refreshing and withdraw this manager's passwords (other nodes keep theirs)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.settings.redis_timeout_s + 1)
        if self._admin is None:
            return
        prefix = self.settings.key_prefix
        with self._lock:
            withdrawals = [
                ("ACL", "SETUSER", user_name(prefix, gid), f"<{self.password(gid)}")
                for gid in sorted(self._provisioned)
            ]
        admin = self._admin
        for command in withdrawals:
            try:
                admin.run(functools.partial(_execute, command=command))
            except CacheUnavailableError:
                break
        if withdrawals:
            self._run_on_replicas(withdrawals)
        for client in self._replicas.values():
            client.close()
        admin.close()


def _execute(client: redis.Redis, *, command: tuple[str, ...]) -> object:
    return client.execute_command(*command)
