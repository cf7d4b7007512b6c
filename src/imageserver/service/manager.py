"""The process manager: authenticates every request and routes it to its identity's worker.

Runs as root in production and never opens an image file. One thread owns the sockets:
the ROUTER that dials out to the proxy, the ROUTER that workers connect to, the zygote's
socketpair and a wake-up pipe for the session checks, which run in a small thread pool so
a slow Redis never stalls other users. Every request ends in exactly one reply: the
worker's, or an error when parsing, authentication, a worker crash or the deadline stops it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from imageserver.errors import ImageServerError
from imageserver.service.identity import Identity
from imageserver.service.worker import HELLO, WELCOME
from imageserver.service.zygote import ZygoteClient, ZygoteEvent
from imageserver.transports.frames import error_frames, split_request

log = logging.getLogger(__name__)

Admit = Callable[[bytes], Identity]
"""Parse and authenticate a request payload; raise ImageServerError to refuse it."""

WorkerKey = tuple[int, int, str]


def worker_key(identity: Identity) -> WorkerKey:
    """One worker per Unix identity and working directory, not per login or session."""
    return (identity.uid, identity.gid, identity.home)


@dataclass(frozen=True)
class ManagerLimits:
    deadline_s: float = 30.0
    idle_timeout_s: float = 300.0
    max_workers: int = 64
    worker_threads: int = 4
    auth_threads: int = 4


@dataclass
class WorkerSlot:
    identity: Identity
    socket_id: bytes
    pid: int | None = None
    is_ready: bool = False
    waiting: list[bytes] = field(default_factory=list)
    in_flight: set[bytes] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class Pending:
    envelope: tuple[bytes, ...]
    payload: bytes
    deadline: float
    worker: WorkerSlot | None = None


class Manager:
    def __init__(
        self,
        *,
        proxy_endpoints: list[str],
        admit: Admit,
        zygote: ZygoteClient,
        limits: ManagerLimits,
        context: zmq.Context | None = None,
        worker_extras: Callable[[Identity], dict[str, Any]] | None = None,
    ) -> None:
        self._admit = admit
        self._worker_extras = worker_extras
        self._zygote = zygote
        self._limits = limits
        self._context = context or zmq.Context()
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="imageserver-manager-"))
        os.chmod(self._runtime_dir, 0o700)
        self.worker_endpoint = f"ipc://{self._runtime_dir}/workers"
        self._front = self._context.socket(zmq.ROUTER)
        self._back = self._context.socket(zmq.ROUTER)
        for sock in (self._front, self._back):
            sock.setsockopt(zmq.LINGER, 0)
        self._back.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for endpoint in proxy_endpoints:
            self._front.connect(endpoint)
        self._back.bind(self.worker_endpoint)
        self._pending: dict[bytes, Pending] = {}
        self._workers: dict[WorkerKey, WorkerSlot] = {}
        self._by_socket: dict[bytes, WorkerSlot] = {}
        self._by_pid: dict[int, WorkerSlot] = {}
        self._ids = itertools.count(1)
        self._admitted: queue.SimpleQueue[tuple[bytes, Identity | str]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        self._auth_pool = ThreadPoolExecutor(limits.auth_threads, thread_name_prefix="auth")
        self._stop = threading.Event()

    # -- main loop -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_write, b"s")

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        poller.register(self._back, zmq.POLLIN)
        poller.register(self._zygote.fileno(), zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        log.info("manager: serving; workers connect to %s", self.worker_endpoint)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if self._front in events:
                    self._on_front()
                if self._back in events:
                    self._on_worker()
                if self._zygote.fileno() in events:
                    self._on_zygote()
                if self._wake_read in events:
                    _drain(self._wake_read)
                self._on_admitted()
                self._housekeeping()
        finally:
            self.close()

    def close(self) -> None:
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
        for slot in list(self._workers.values()):
            self._terminate(slot, signal.SIGTERM)
        self._front.close(0)
        self._back.close(0)
        self._zygote.close()
        with contextlib.suppress(OSError):
            os.unlink(self._runtime_dir / "workers")
            self._runtime_dir.rmdir()

    # -- requests from clients -------------------------------------------------------------

    def _on_front(self) -> None:
        while True:
            try:
                frames = self._front.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            incoming = split_request(frames)
            if incoming.problem is not None:
                self._reply(incoming.envelope, error_frames(incoming.problem))
                continue
            request_id = next(self._ids).to_bytes(8, "big")
            deadline = time.monotonic() + self._limits.deadline_s
            self._pending[request_id] = Pending(incoming.envelope, incoming.payload, deadline)
            self._auth_pool.submit(self._check, request_id, incoming.payload)

    def _check(self, request_id: bytes, payload: bytes) -> None:
        """Runs in the auth pool: parse, authenticate, resolve the Unix identity."""
        try:
            outcome: Identity | str = self._admit(payload)
        except ImageServerError as exc:
            outcome = str(exc)
        except Exception as exc:
            log.exception("admission failed")
            outcome = f"internal error while checking the request: {type(exc).__name__}"
        self._admitted.put((request_id, outcome))
        os.write(self._wake_write, b"a")

    def _on_admitted(self) -> None:
        while not self._admitted.empty():
            request_id, outcome = self._admitted.get()
            pending = self._pending.get(request_id)
            if pending is None:
                continue  # already answered (deadline)
            if isinstance(outcome, str):
                self._finish(request_id, error_frames(outcome))
                continue
            slot = self._workers.get(worker_key(outcome)) or self._spawn(outcome)
            slot.last_used = time.monotonic()
            pending.worker = slot
            if slot.is_ready:
                self._dispatch(slot, request_id)
            else:
                slot.waiting.append(request_id)

    def _dispatch(self, slot: WorkerSlot, request_id: bytes) -> None:
        pending = self._pending[request_id]
        try:
            self._back.send_multipart([slot.socket_id, request_id, pending.payload])
        except zmq.ZMQError as exc:
            self._finish(request_id, error_frames(f"worker unavailable: {exc}"))
            return
        slot.in_flight.add(request_id)

    # -- workers ---------------------------------------------------------------------------

    def _spawn(self, identity: Identity) -> WorkerSlot:
        self._evict_for_room()
        socket_id = os.urandom(16).hex().encode()
        slot = WorkerSlot(identity=identity, socket_id=socket_id)
        self._workers[worker_key(identity)] = slot
        self._by_socket[socket_id] = slot
        self._zygote.spawn(
            socket_id.decode(),
            {
                "uid": identity.uid,
                "gid": identity.gid,
                "home": identity.home,
                "login": identity.login,
                "esaf": identity.esaf,
                "socket_id": socket_id.decode(),
                "endpoint": self.worker_endpoint,
                "threads": self._limits.worker_threads,
                **(self._worker_extras(identity) if self._worker_extras else {}),
            },
        )
        log.info("manager: starting a worker for uid %d gid %d", identity.uid, identity.gid)
        return slot

    def _on_worker(self) -> None:
        while True:
            try:
                frames = self._back.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            slot = self._by_socket.get(frames[0])
            if slot is None:
                continue  # a retired worker's late words
            if frames[1:] == [HELLO]:
                self._welcome(slot)
                continue
            request_id, reply = frames[1], frames[2:]
            slot.in_flight.discard(request_id)
            slot.last_used = time.monotonic()
            if request_id in self._pending:
                self._finish(request_id, reply)

    def _welcome(self, slot: WorkerSlot) -> None:
        self._back.send_multipart([slot.socket_id, WELCOME])
        slot.is_ready = True
        waiting, slot.waiting = slot.waiting, []
        for request_id in waiting:
            if request_id in self._pending:
                self._dispatch(slot, request_id)

    def _on_zygote(self) -> None:
        try:
            events = self._zygote.read_events()
        except ConnectionError:
            log.critical("manager: the worker zygote has gone; stopping")
            self._stop.set()
            return
        for event in events:
            self._on_zygote_event(event)

    def _on_zygote_event(self, event: ZygoteEvent) -> None:
        if event.kind == "spawned":
            slot = self._by_socket.get(event.key.encode())
            if slot is not None:
                slot.pid = event.pid
                self._by_pid[event.pid] = slot
            return
        slot = self._by_pid.pop(event.pid, None)
        if slot is None:
            return
        log.warning("manager: worker %d (uid %d) %s", event.pid, slot.identity.uid, event.status)
        self._retire(slot, f"the worker process {event.status}; please retry")

    def _retire(self, slot: WorkerSlot, reason: str) -> None:
        """Forget a worker and answer everything it still owed."""
        if self._workers.get(worker_key(slot.identity)) is slot:
            del self._workers[worker_key(slot.identity)]
        self._by_socket.pop(slot.socket_id, None)
        for request_id in [*slot.in_flight, *slot.waiting]:
            if request_id in self._pending:
                self._finish(request_id, error_frames(reason))
        slot.in_flight.clear()
        slot.waiting.clear()

    def _terminate(self, slot: WorkerSlot, signum: int) -> None:
        if slot.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(slot.pid, signum)

    def _evict_for_room(self) -> None:
        if len(self._workers) < self._limits.max_workers:
            return
        idle = [s for s in self._workers.values() if not s.in_flight and not s.waiting]
        if not idle:
            return  # all busy: run one over the limit rather than refuse
        oldest = min(idle, key=lambda s: s.last_used)
        self._terminate(oldest, signal.SIGTERM)
        self._retire(oldest, "worker retired")

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for request_id, pending in list(self._pending.items()):
            if pending.deadline > now:
                continue
            slot = pending.worker
            is_hung = slot is not None and request_id in slot.in_flight
            self._finish(
                request_id,
                error_frames(f"request timed out after {self._limits.deadline_s:g} s"),
            )
            if slot is not None and is_hung:
                log.error("manager: worker %s hung past the deadline; replacing it", slot.pid)
                self._terminate(slot, signal.SIGKILL)
                self._retire(slot, "the worker was restarted after another request hung")
        for slot in list(self._workers.values()):
            idle_s = now - slot.last_used
            if slot.is_ready and not slot.in_flight and idle_s > self._limits.idle_timeout_s:
                self._terminate(slot, signal.SIGTERM)
                self._retire(slot, "worker retired")

    # -- replies ---------------------------------------------------------------------------

    def _finish(self, request_id: bytes, frames: list[bytes]) -> None:
        pending = self._pending.pop(request_id)
        if pending.worker is not None:
            pending.worker.in_flight.discard(request_id)
        self._reply(pending.envelope, frames)

    def _reply(self, envelope: tuple[bytes, ...], frames: list[bytes]) -> None:
        try:
            self._front.send_multipart([*envelope, *frames])
        except zmq.ZMQError as exc:
            log.warning("manager: could not send a reply: %s", exc)


def _drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 4096):
            return
