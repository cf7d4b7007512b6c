"""The tests' redis-server: the project's embedded one, failing the test when it cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.embedded_redis import EmbeddedRedis, EmbeddedRedisError


class RedisServer(EmbeddedRedis):
    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        try:
            super().__init__(directory, password=password)
        except EmbeddedRedisError as exc:
            pytest.fail(f"{exc}; scripts/test installs redis-server")

    def start(self) -> RedisServer:
        try:
            super().start()
        except EmbeddedRedisError as exc:
            pytest.fail(str(exc))
        return self
