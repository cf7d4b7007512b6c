"""A pre-warmed process that forks workers on demand.

The manager forks it before it creates any ZeroMQ context or thread, so the zygote holds no
sockets; it imports the imaging stack and loads the compiled kernels once. Forking a worker
from it costs milliseconds (no interpreter start, no JIT), which is how a new identity is
served within 100 ms. Workers are the zygote's children: it reaps them and tells the
manager, over a socketpair of JSON lines, which one ended and how.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
WorkerMain = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ZygoteEvent:
    """``spawned`` (key, pid) or ``exited`` (pid, status text)."""

    kind: str
    pid: int
    key: str = ""
    status: str = ""


class ZygoteClient:
    """The manager's end: ask for workers, read spawn and exit events."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self._sock = sock
        self._buffer = b""
        self.pid = pid

    def fileno(self) -> int:
        return self._sock.fileno()

    def spawn(self, key: str, spec: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps({"op": "spawn", "key": key, "spec": spec}).encode() + b"\n")

    def read_events(self) -> list[ZygoteEvent]:
        """Events available now; raises ConnectionError when the zygote has gone."""
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the worker zygote has exited")
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for line in lines:
            message = json.loads(line)
            events.append(
                ZygoteEvent(
                    kind=message["op"],
                    pid=int(message["pid"]),
                    key=message.get("key", ""),
                    status=message.get("status", ""),
                )
            )
        return events

    def close(self) -> None:
        self._sock.close()


def start_zygote(worker_main: WorkerMain, warm_up: Callable[[], None]) -> ZygoteClient:
    """Fork the zygote; call before creating any ZeroMQ context or thread in this process."""
    manager_end, zygote_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the zygote
        manager_end.close()
        status = 0
        try:
            _set_parent_death_signal(signal.SIGTERM)
            warm_up()
            _serve(zygote_end, worker_main)
        except BaseException:
            log.exception("worker zygote failed")
            status = 1
        finally:
            os._exit(status)
    zygote_end.close()
    manager_end.setblocking(True)
    return ZygoteClient(manager_end, pid)


def _serve(sock: socket.socket, worker_main: WorkerMain) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    children: set[int] = set()
    buffer = b""
    try:
        while True:
            readable, _, _ = select.select([sock], [], [], 0.05)
            for pid, status in _reap(children):
                _send(sock, {"op": "exited", "pid": pid, "status": status})
            if not readable:
                continue
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return  # the manager has gone: stop everything below us
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                command = json.loads(line)
                pid = _fork_worker(sock, worker_main, command["spec"])
                children.add(pid)
                _send(sock, {"op": "spawned", "pid": pid, "key": command["key"]})
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _fork_worker(sock: socket.socket, worker_main: WorkerMain, spec: dict[str, Any]) -> int:
    pid = os.fork()
    if pid != 0:
        return pid
    status = 0
    try:
        sock.close()
        _set_parent_death_signal(signal.SIGKILL)
        worker_main(spec)
    except BaseException:
        log.exception("worker failed")
        status = 1
    finally:
        os._exit(status)


def _reap(children: set[int]) -> list[tuple[int, str]]:
    ended = []
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            children.discard(pid)
            ended.append((pid, _describe(status)))
    return ended


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _set_parent_death_signal(signum: int) -> None:
    """Linux: die with the parent, so no worker outlives its manager."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
