"""A pre-warmed process that forks workers on demand, holding nothing a worker must not have.

The manager starts it as a new program (``python -m imageserver.service.zygote``), not as a
fork of itself: a fork would hand every worker a copy of the manager's memory, with the
administrative Redis password and the session store's address in it. The zygote reads a
`WorkerConfig` (no secret) from its socketpair, imports the imaging stack, compiles the
kernels once and says ``ready``; forking a worker from it then costs milliseconds, which is
how a new identity is served within 100 ms.

Lifetimes: the zygote dies with the manager (PR_SET_PDEATHSIG, and an end-of-file on the
socketpair), and each worker with the zygote (PR_SET_PDEATHSIG set by the worker *after* it
drops its privileges: a credential change clears it). Workers are the zygote's children: it
reaps them and tells the manager, over JSON lines, which one ended and how.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imageserver.service.lifetime import set_parent_death_signal
from imageserver.service.worker_config import WorkerConfig

log = logging.getLogger(__name__)

_ENVIRONMENT_PREFIXES = ("LANG", "LC_", "TZ", "PATH", "PYTHON", "NUMBA_", "OMP_", "HDF5_")
_ENVIRONMENT_NAMES = frozenset({"VIRTUAL_ENV", "TMPDIR", "TERM"})


@dataclass(frozen=True)
class ZygoteEvent:
    """``ready``, ``spawned`` (key, pid) or ``exited`` (pid, status text)."""

    kind: str
    pid: int = 0
    key: str = ""
    status: str = ""


class ZygoteClient:
    """The manager's end: ask for workers, read ready, spawn and exit events."""

    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes]) -> None:
        self._sock = sock
        self._buffer = b""
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    def fileno(self) -> int:
        return self._sock.fileno()

    def spawn(self, key: str, spec: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps({"op": "spawn", "key": key, "spec": spec}).encode() + b"\n")

    def read_events(self) -> list[ZygoteEvent]:
        """Events available now; raises ConnectionError when the zygote has gone."""
        try:
            chunk = self._sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
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
                    pid=int(message.get("pid", 0)),
                    key=message.get("key", ""),
                    status=message.get("status", ""),
                )
            )
        return events

    def close(self) -> None:
        """Closing the socketpair ends the zygote, and with it every worker."""
        self._sock.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def start_zygote(config: WorkerConfig) -> ZygoteClient:
    """Start the zygote program; it warms up in the background and then sends ``ready``."""
    manager_end, zygote_end = socket.socketpair()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imageserver.service.zygote",
                str(zygote_end.fileno()),
                str(os.getpid()),
            ],
            pass_fds=[zygote_end.fileno()],
            stdin=subprocess.DEVNULL,
            env=worker_environment(os.environ),
        )
    finally:
        zygote_end.close()
    manager_end.setblocking(True)
    manager_end.sendall(config.to_json() + b"\n")
    return ZygoteClient(manager_end, process)


def worker_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The variables workers need (locale, paths, library tuning); nothing else crosses."""
    return {
        name: value
        for name, value in environ.items()
        if name in _ENVIRONMENT_NAMES or name.startswith(_ENVIRONMENT_PREFIXES)
    }


def main(argv: Sequence[str]) -> int:
    """The zygote program: ``python -m imageserver.service.zygote FD MANAGER_PID``."""
    fd, manager_pid = int(argv[0]), int(argv[1])
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != manager_pid:
        return 0  # the manager died before the signal was armed
    sock = socket.socket(fileno=fd)
    line, rest = _read_line(sock)
    config = WorkerConfig.from_json(line)
    from imageserver.logs import configure_logging

    configure_logging(config.log_level, to_syslog=False)
    _warm_up()
    _send(sock, {"op": "ready", "pid": os.getpid()})
    _serve(sock, config, rest)
    return 0


def _warm_up() -> None:
    """Import every module a worker may need and compile the kernels, as root, once.

    After the privilege drop a worker may be unable to read the interpreter's own files
    (a Python installed under /root), and each import would cost every new worker again.
    """
    import imageserver.cache.renderer
    import imageserver.cli
    import imageserver.service.jobs
    import imageserver.service.worker  # noqa: F401
    from imageserver.allocator import tune_allocator
    from imageserver.imaging import contrast, reduce, spotfinder

    tune_allocator()
    reduce.warm_up()
    contrast.warm_up()
    spotfinder.warm_up()


def _read_line(sock: socket.socket) -> tuple[bytes, bytes]:
    """The first line, and whatever followed it in the same reads (spawn commands)."""
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(0)  # the manager went away before saying anything
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def _serve(sock: socket.socket, config: WorkerConfig, buffer: bytes) -> None:
    children: set[int] = set()
    try:
        while True:
            readable, _, _ = select.select([sock], [], [], 0.05)
            for pid, status in _reap(children):
                _send(sock, {"op": "exited", "pid": pid, "status": status})
            if readable:
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
                pid = _fork_worker(sock, command["spec"], config)
                children.add(pid)
                _send(sock, {"op": "spawned", "pid": pid, "key": command["key"]})
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _fork_worker(sock: socket.socket, spec: dict[str, Any], config: WorkerConfig) -> int:
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid != 0:
        return pid
    status = 0
    try:
        sock.close()
        from imageserver.service.worker import run_worker

        run_worker(spec, config, parent_pid=zygote_pid)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
