"""The whole service on one machine: signing keys, a config, proxy and manager processes.

The demo, the end-to-end tests and the chain benchmarks all start the service this way, as
separate processes talking over real sockets, exactly as it runs in production.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import zmq

from imageserver.client import Client, Reply, send_request
from imageserver.config import Settings, load_settings
from imageserver.embedded_redis import free_port
from imageserver.errors import LocalServiceError
from imageserver.service.auth import (
    connect_session_store,
    generate_keypair,
    load_private_key,
    sign_isauth,
    write_session,
)
from imageserver.service.systemd import NOTIFY_ENV

START_DEADLINE_S = 120.0


class _ReadinessSocket:
    """Where the processes say READY=1 (systemd's notify protocol), as systemd would listen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))

    def count_ready(self, timeout_s: float) -> int:
        self._sock.settimeout(timeout_s)
        try:
            message = self._sock.recv(4096)
        except TimeoutError:
            return 0
        return int(b"READY=1" in message.split(b"\n"))

    def __enter__(self) -> _ReadinessSocket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)


class LocalService:
    """proxy + manager (+ HTTP gateway) subprocesses configured in ``directory``; sessions
    signed here.

    ``extra_config`` is appended to the generated TOML (e.g. a ``[workers]`` table); the
    endpoints are ipc sockets inside ``directory``. ``web_port`` starts the gateway on
    127.0.0.1 at that port (0: a free one). ``redis_config`` is added to both [session] and
    [cache] (e.g. ``sentinels``).
    """

    def __init__(
        self,
        directory: Path,
        redis_url: str,
        extra_config: str = "",
        *,
        web_port: int | None = None,
        redis_config: str = "",
        web_host: str = "127.0.0.1",
    ) -> None:
        self.directory = directory
        self.web_url: str | None = None
        web_config = ""
        if web_port is not None:
            port = web_port or free_port(web_host)
            self.web_url = f"http://{web_host}:{port}"
            web_config = f'[web]\nlisten = "{web_host}:{port}"\n'
        self.roles = ("proxy", "serve", "web") if web_port is not None else ("proxy", "serve")
        self.front = f"ipc://{directory}/front.sock"
        self.back = f"ipc://{directory}/back.sock"
        keys = directory / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        if not (keys / "signing.pem").exists():
            generate_keypair(keys / "signing.pem", keys / "session.pub.pem")
        self.private_key = load_private_key(keys / "signing.pem")
        self.config = directory / "imageserver.toml"
        self.config.write_text(
            "# Written by imageserver.local_service; docs/configuration.md lists every key.\n"
            "[proxy]\n"
            f'front_endpoint = "{self.front}"\nback_endpoint = "{self.back}"\n'
            "[session]\n"
            f'redis_url = "{redis_url}"\nredis_timeout_s = 0.5\n{redis_config}'
            f'public_key_path = "{keys / "session.pub.pem"}"\n'
            "[cache]\n"
            f'redis_url = "{redis_url.rsplit("/", 1)[0]}/1"\n{redis_config}'
            + web_config
            + extra_config
        )
        self.settings: Settings = load_settings(self.config)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.context = zmq.Context()

    def start(self) -> LocalService:
        """Start both processes and return once each has said READY=1, as systemd would see."""
        with _ReadinessSocket(self.directory / "notify.sock") as readiness:
            for role in self.roles:
                self._launch(role, {NOTIFY_ENV: str(readiness.path)})
            deadline = time.monotonic() + START_DEADLINE_S
            ready = 0
            while ready < len(self.processes) and time.monotonic() < deadline:
                self.check_alive()
                ready += readiness.count_ready(timeout_s=0.2)
            if ready < len(self.processes):
                raise LocalServiceError(f"not ready within {START_DEADLINE_S:g} s:\n{self.logs()}")
        reply = self.request({"type": "jpeg", "pid": "probe"}, timeout_s=10.0)
        if reply.error is None or "not active" not in reply.error:
            raise LocalServiceError(f"unexpected answer to a probe: {reply.frames!r}")
        return self

    def restart_proxy(self) -> None:
        """Start the proxy again after it was stopped (nodes and the gateway reconnect)."""
        self._launch("proxy", {})

    def restart(self, role: str) -> None:
        """Stop one process (if running) and start it again; returns once it has said
        READY=1."""
        process = self.processes.get(role)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        with _ReadinessSocket(self.directory / "notify.sock") as readiness:
            self._launch(role, {NOTIFY_ENV: str(readiness.path)})
            deadline = time.monotonic() + START_DEADLINE_S
            while not readiness.count_ready(timeout_s=0.2):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise LocalServiceError(f"{role} not ready again:\n{self.logs()}")

    def add_node(self, role: str) -> None:
        """Start one more node (`imageserver serve`) under ``role``; returns once it is ready.
        Every node dials the same broker, so it takes work as soon as it is there."""
        self.restart(role)

    def _launch(self, role: str, env: dict[str, str]) -> None:
        command = role.rstrip("0123456789")  # serve2 is one more `serve`
        with (self.directory / f"{role}.log").open("ab") as log:
            self.processes[role] = subprocess.Popen(
                [sys.executable, "-m", "imageserver", command, "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={**os.environ, **env},
            )

    def check_alive(self) -> None:
        for role, process in self.processes.items():
            if process.poll() is not None:
                raise LocalServiceError(f"{role} exited ({process.returncode}):\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()
        self.context.term()

    def session(self, user: str, esafs: list[int], **claims: Any) -> str:
        """Sign and store a session as the authentication tier would; returns its token."""
        pid = secrets.token_hex(16)
        isauth = {"pid": pid, "uid": user, "allowedESAFs": esafs, **claims}
        text, signature = sign_isauth(isauth, self.private_key)
        write_session(connect_session_store(self.settings), pid, text, signature, 24 * 3600)
        return pid

    def request(self, request: dict[str, Any], timeout_s: float = 20.0) -> Reply:
        return send_request(self.front, request, timeout_s=timeout_s, context=self.context)

    def client(self) -> Client:
        """A persistent client of the front; close it before `stop` (which ends the context)."""
        return Client(self.front, context=self.context)

    def manager_pid(self) -> int:
        return self.processes["serve"].pid

    def login_url(self, pid: str, next_path: str = "/") -> str:
        """The link that logs a browser in to the gateway with this session."""
        if self.web_url is None:
            raise LocalServiceError("the gateway was not started (web_port)")
        query = urllib.parse.urlencode({"session": pid, "next": next_path})
        return f"{self.web_url}/login?{query}"
