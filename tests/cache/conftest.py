"""Fixtures of the cache tests: real redis-servers (helpers are in cache_samples)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_samples import start_redis

from imageserver.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(module_redis: EmbeddedRedis) -> str:
    """A URL of an empty database on the module's server (flushed for each test)."""
    module_redis.client().flushall()
    return module_redis.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of the test's own, which the test may stop and start."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
