"""Redis clients from settings: one server named by a URL, or the primary Sentinels name.

With Sentinel, a client asks the sentinels where the primary is each time it opens a
connection, so it follows a failover by itself: while no primary is known its commands fail
with a `redis.ConnectionError` (``MasterNotFoundError``), and a write that reaches a demoted
primary (READONLY) is turned into a `redis.ConnectionError` too, after which the client asks
again. Callers treat both as Redis being away for a moment; nothing needs a restart.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry

from imageserver.config import parse_sentinels

Address = tuple[str, int]

NO_CLIENT_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)
"""Client options that skip CLIENT SETINFO on connect: a worker's ACL user may not run it."""


class RedisSection(Protocol):
    """What `RedisTarget.of` reads: the [session] or [cache] settings."""

    @property
    def redis_url(self) -> str: ...
    @property
    def sentinels(self) -> str: ...
    @property
    def sentinel_service(self) -> str: ...
    @property
    def sentinel_password(self) -> str: ...


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis is: ``url``'s server, or the primary ``sentinels`` name for ``service``.

    With sentinels, ``url`` gives only the database, the user name and password of the data
    nodes and whether to use TLS (``rediss://``); its host and port are not used.
    """

    url: str
    sentinels: tuple[Address, ...] = ()
    service: str = ""
    sentinel_password: str = ""

    @classmethod
    def of(cls, section: RedisSection) -> RedisTarget:
        return cls(
            section.redis_url,
            parse_sentinels(section.sentinels),
            section.sentinel_service,
            section.sentinel_password,
        )

    @property
    def has_sentinels(self) -> bool:
        return bool(self.sentinels)

    def with_url(self, url: str) -> RedisTarget:
        return replace(self, url=url)

    def to_table(self) -> dict[str, Any]:
        """This target as JSON-ready values (a worker's grant), read back by `from_table`."""
        table: dict[str, Any] = {"url": self.url}
        if self.sentinels:
            table["sentinels"] = [list(address) for address in self.sentinels]
            table["service"] = self.service
            if self.sentinel_password:
                table["sentinel_password"] = self.sentinel_password
        return table

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> RedisTarget:
        sentinels = tuple((str(host), int(port)) for host, port in table.get("sentinels", ()))
        return cls(
            str(table["url"]),
            sentinels,
            str(table.get("service", "")),
            str(table.get("sentinel_password", "")),
        )


def connect_redis(
    target: RedisTarget,
    *,
    timeout_s: float,
    retries: int = 0,
    username: str | None = None,
    password: str | None = None,
    **options: Any,
) -> redis.Redis:
    """A client of ``target``'s server or Sentinel primary; no connection is made yet.

    Every socket wait is bounded by ``timeout_s`` (a sentinel's answer too); a failed command
    is tried ``retries`` more times at once, never after a pause.
    """
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), retries),
        **options,
    }
    if username is not None:
        common.update(username=username, password=password)
    if not target.has_sentinels:
        return redis.Redis.from_url(target.url, **common)
    sentinel = redis.sentinel.Sentinel(
        list(target.sentinels),
        sentinel_kwargs={
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "password": target.sentinel_password or None,
            **NO_CLIENT_SETINFO,
        },
    )
    return sentinel.master_for(target.service, **{**_node_options(target.url), **common})


def connect_node(target: RedisTarget, address: Address, **options: Any) -> redis.Redis:
    """A client of one data node of ``target`` (a replica), with its URL's credentials."""
    return redis.Redis(host=address[0], port=address[1], **_node_options(target.url), **options)


def replica_addresses(client: redis.Redis) -> list[Address]:
    """The replicas the sentinels report as up for a client made by `connect_redis` (none for
    a plain URL, or when no sentinel answers)."""
    pool = client.connection_pool
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return []
    found = pool.sentinel_manager.discover_slaves(pool.service_name)
    return [(str(host), int(port)) for host, port in found]


def close_redis(client: redis.Redis) -> None:
    """Close ``client``'s connections, and its sentinels' when it has them."""
    pool = client.connection_pool
    client.close()
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        pool.disconnect()
        pool.sentinel_manager.close()


def _node_options(url: str) -> dict[str, Any]:
    """The options of ``url`` that hold for every data node: database, credentials, TLS."""
    options = parse_url(url)
    for key in ("host", "port", "path"):
        options.pop(key, None)
    connection_class = options.pop("connection_class", None)
    if isinstance(connection_class, type) and issubclass(connection_class, SSLConnection):
        options["ssl"] = True
    return options
