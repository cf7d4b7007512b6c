"""A Sentinel-managed Redis for tests: a primary, a replica and three sentinels, all real
redis-server processes on free loopback ports, with a quick failover (about 2–4 s)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from imageserver.embedded_redis import find_redis_server, free_port

SERVICE = "istest"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
START_DEADLINE_S = 15.0


class SentinelGroup:
    """Data nodes whose default user needs ``password`` (when given), and three sentinels
    (quorum 2) that know it. ``kill_primary`` is a crash (SIGKILL); the sentinels then
    promote the replica."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.binary = find_redis_server()
        self.directory = directory
        self.password = password
        self.node_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.killed: set[int] = set()

    @property
    def sentinels(self) -> str:
        """The ``sentinels`` setting: ``host:port,host:port,host:port``."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def url(self, db: int = 0) -> str:
        """The ``redis_url`` that goes with `sentinels` (credentials and database)."""
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}{SERVICE}/{db}"

    def start(self) -> SentinelGroup:
        primary, replica = self.node_ports
        self._start_node(primary)
        self._start_node(replica, "--replicaof", "127.0.0.1", str(primary))
        self._wait(lambda: self._replication(replica)["master_link_status"] == "up")
        for port in self.sentinel_ports:
            self._start_sentinel(port, primary)
        self._wait(self._sentinels_see_everyone)
        return self

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, password=self.password, socket_timeout=1.0, socket_connect_timeout=1.0
        )

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0)

    def primary_port(self, sentinel_port: int | None = None) -> int:
        """The primary's port as a sentinel (the first) says."""
        with self.sentinel(sentinel_port or self.sentinel_ports[0]) as client:
            _host, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def replica_port(self) -> int:
        (replica,) = (port for port in self.node_ports if port != self.primary_port())
        return replica

    def kill_primary(self) -> int:
        """SIGKILL the primary; its port."""
        port = self.primary_port()
        self.killed.add(port)
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(timeout=10)
        return port

    def wait_for_failover(self, old_port: int, timeout_s: float = 20.0) -> int:
        """The new primary's port, once every sentinel names it and it says it is one."""

        def promoted() -> bool:
            ports = {self.primary_port(port) for port in self.sentinel_ports}
            if len(ports) != 1 or old_port in ports:
                return False
            return self._replication(ports.pop())["role"] == "master"

        self._wait(promoted, timeout_s)
        return self.primary_port()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        self.processes.clear()

    # -- steps ---------------------------------------------------------------------------------

    def _start_node(self, port: int, *options: str) -> None:
        command = [self.binary, "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        command += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not in 5 s
        if self.password:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        self._launch(port, [*command, *options])
        self._wait(lambda: self._answers(self.node(port)))

    def _replication(self, port: int) -> dict[str, object]:
        with self.node(port) as client:
            return dict(client.info("replication"))

    def _start_sentinel(self, port: int, primary: int) -> None:
        """Started knowing the replica and the other sentinels (as the lines a sentinel writes
        to its file once it has met them), so the group is whole at once, not after seconds
        of discovery."""
        config = self.directory / f"sentinel-{port}.conf"
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.directory}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
            f"sentinel myid {_sentinel_id(port)}",
            # What a sentinel would learn in its first seconds, known from the start:
            f"sentinel known-replica {SERVICE} 127.0.0.1 {self.node_ports[1]}",
            *(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {_sentinel_id(other)}"
                for other in self.sentinel_ports
                if other != port
            ),
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        config.write_text("\n".join(lines) + "\n")
        self._launch(port, [self.binary, str(config), "--sentinel"])
        self._wait(lambda: self._answers(self.sentinel(port)))

    def _launch(self, port: int, command: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / f"redis-{port}.log").open("ab")
        with log:
            self.processes[port] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )

    def _sentinels_see_everyone(self) -> bool:
        for port in self.sentinel_ports:
            with self.sentinel(port) as client:
                state = client.sentinel_master(SERVICE)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def _answers(self, client: redis.Redis) -> bool:
        with client:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

    def _wait(self, predicate: object, timeout_s: float = START_DEADLINE_S) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for port, process in self.processes.items():
                if port not in self.killed and process.poll() is not None:
                    pytest.fail(f"redis-server on port {port} exited ({process.returncode})")
            try:
                if predicate():
                    return
            except redis.RedisError:
                pass  # not up yet
            time.sleep(0.05)
        pytest.fail(f"the Sentinel group was not ready within {timeout_s:g} s")


def _sentinel_id(port: int) -> str:
    return f"{port:040x}"
