"""The process manager: authenticates every request and routes it to its identity's worker.

Runs as root in production and never opens an image file. One thread owns the sockets:
a DEALER per broker it dials out to (`transports.node_link`: heartbeats, capacity, re-join),
the ROUTER that workers connect to, the zygote's
socketpair and a wake-up pipe for the session checks, which run in a small thread pool so
a slow Redis never stalls other users. Every request ends in exactly one reply: the
worker's, or an error when parsing, authentication, a worker's start, a crash or the
deadline stops it. `_finish` is the only place a reply leaves, and it answers a request
only while it is pending, so no path can answer twice.

A request past its deadline is answered with a timeout, and its worker is *drained*: new
requests of that identity go to a fresh worker, the old one finishes its other requests and
is killed when the last of them is answered (or reaches its own deadline). A worker that
cannot start (no home directory) reports why; its identity gets that answer for a while
instead of a new fork per request. Refusals are written to the log as one line each.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
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

from imageserver import metrics
from imageserver.config import BrokerSettings
from imageserver.errors import BusyError, CancelledError, DeadlineError, InternalError, WorkerError
from imageserver.service import link
from imageserver.service.admission import Admission, RequestInfo
from imageserver.service.identity import Identity
from imageserver.service.reply import Failure, Reply, Success
from imageserver.service.requests import echo_job, parse_request
from imageserver.service.systemd import notify
from imageserver.service.zygote import ZygoteClient, ZygoteEvent
from imageserver.stage_times import StageTimes
from imageserver.transports.frames import reply_frames, split_request
from imageserver.transports.node_link import BrokerLink
from imageserver.transports.node_protocol import Announcement

log = logging.getLogger(__name__)

Admit = Callable[[bytes], Admission]
"""Parse and authenticate a request payload; never raises for a bad request."""
Grant = Callable[[Identity], dict[str, Any]]
"""The secrets one new worker may hold (its ESAF group's Redis user)."""

WorkerKey = tuple[int, int, str]
Origin = tuple[int, bytes]
"""Where a reply goes: the index of the broker link and the broker's request id."""
AUDITED_CODES = frozenset(
    {
        "access_denied",
        "session_invalid",
        "esaf_not_allowed",
        "account_unusable",
        "permission_denied",
    }
)
ZYGOTE_RESTARTS = 3
"""Consecutive zygote deaths before it is ready, after which the manager gives up."""


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
    failed_start_retry_s: float = 30.0
    max_index_jobs: int = 2
    """Index jobs running at once on this node (all workers); later ones wait in order."""


@dataclass
class WorkerSlot:
    identity: Identity
    socket_id: bytes
    pid: int | None = None
    is_ready: bool = False
    is_draining: bool = False
    is_gone: bool = False
    waiting: list[bytes] = field(default_factory=list)
    in_flight: set[bytes] = field(default_factory=set)
    abandoned: set[bytes] = field(default_factory=set)
    """In flight here but already answered (timed out): the worker owes nothing for them."""
    last_used: float = field(default_factory=time.monotonic)

    @property
    def owes(self) -> set[bytes]:
        return self.in_flight - self.abandoned


@dataclass
class Pending:
    origin: Origin
    payload: bytes
    received: float
    deadline: float
    info: RequestInfo | None = None
    worker: WorkerSlot | None = None
    typed: bool = False
    identity: Identity | None = None
    is_retried: bool = False
    """Given to a fresh worker once already, after its first one had vanished."""


class Manager:
    def __init__(
        self,
        *,
        broker_endpoints: list[str],
        admit: Admit,
        start_zygote: Callable[[], ZygoteClient],
        limits: ManagerLimits,
        context: zmq.Context | None = None,
        grant: Grant | None = None,
        broker: BrokerSettings | None = None,
    ) -> None:
        self._admit = admit
        self._grant = grant or (lambda _identity: {})
        self._start_zygote = start_zygote
        self._limits = limits
        self._broker_endpoints = broker_endpoints
        self._broker = broker or BrokerSettings()
        self._node_name = self._broker.node_name or f"{os.uname().nodename}-{os.getpid()}"
        self._context = context or zmq.Context()
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="imageserver-manager-"))
        os.chmod(self._runtime_dir, 0o700)
        self.worker_endpoint = f"ipc://{self._runtime_dir}/workers"
        self._links = [
            BrokerLink(self._context, endpoint, self._broker, self._announcement)
            for endpoint in broker_endpoints
        ]
        self._back = self._context.socket(zmq.ROUTER)
        self._back.setsockopt(zmq.LINGER, 0)
        self._back.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._back.bind(self.worker_endpoint)
        self._pending: dict[bytes, Pending] = {}
        self._workers: dict[WorkerKey, WorkerSlot] = {}
        self._by_socket: dict[bytes, WorkerSlot] = {}
        self._by_pid: dict[int, WorkerSlot] = {}
        self._failed: dict[WorkerKey, tuple[Failure, float]] = {}
        self._ids = itertools.count(1)
        self._index_running: set[bytes] = set()
        self._index_waiting: collections.deque[bytes] = collections.deque()
        self._admitted: queue.SimpleQueue[tuple[bytes, Admission]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        self._auth_pool = ThreadPoolExecutor(limits.auth_threads, thread_name_prefix="auth")
        self._stop = threading.Event()
        self._poller = zmq.Poller()
        self._zygote = start_zygote()
        self._zygote_deaths = 0
        self._is_ready = False

    # -- main loop -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_write, b"s")

    def run(self) -> None:
        for broker_link in self._links:
            self._poller.register(broker_link.socket, zmq.POLLIN)
        self._poller.register(self._back, zmq.POLLIN)
        self._poller.register(self._zygote.fileno(), zmq.POLLIN)
        self._poller.register(self._wake_read, zmq.POLLIN)
        log.info("manager: starting; workers connect to %s", self.worker_endpoint)
        try:
            while not self._stop.is_set():
                events = dict(self._poller.poll(100))
                for index, broker_link in enumerate(self._links):
                    if broker_link.socket in events:
                        for request_id, body in broker_link.receive():
                            self._on_request((index, request_id), body)
                if self._back in events:
                    self._on_worker()
                if self._zygote.fileno() in events:
                    self._on_zygote()
                if self._wake_read in events:
                    _drain(self._wake_read)
                self._on_admitted()
                self._housekeeping()
                self._tick_links()
        finally:
            self.close()

    def close(self) -> None:
        for broker_link in self._links:
            broker_link.close()  # first: the brokers re-send or answer what is still here
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
        for slot in list(self._by_socket.values()):
            self._signal(slot, signal.SIGTERM)
        self._index_waiting.clear()  # answered below: none may start a worker on the way out
        for request_id in list(self._pending):
            self._finish(request_id, Failure.of(WorkerError("the server is shutting down")))
        self._back.close(0)
        self._zygote.close()
        with contextlib.suppress(OSError):
            os.unlink(self._runtime_dir / "workers")
            self._runtime_dir.rmdir()

    # -- requests from clients -------------------------------------------------------------

    def _tick_links(self) -> None:
        now = time.monotonic()
        for broker_link in self._links:
            replaced = broker_link.tick(now)
            if replaced is not None:
                self._poller.unregister(replaced)
                self._poller.register(broker_link.socket, zmq.POLLIN)

    def _announcement(self) -> Announcement:
        return Announcement(
            self._node_name,
            self._broker.capacity,
            self._broker.slots,
            len(self._pending),
        )

    def _on_request(self, origin: Origin, body: list[bytes]) -> None:
        """A request from a broker: the client's frames after its delimiter."""
        incoming = split_request([b"", *body])
        if incoming.problem is not None:
            self._front_send(origin, [incoming.problem.encode()])
            return
        if len(self._pending) >= self._broker.capacity:
            busy = Failure.of(BusyError("this image server node is busy; please retry"))
            metrics.manager_request(None, busy.code, 0.0)
            self._front_send(origin, reply_frames(busy, typed=incoming.typed))
            return
        request_id = next(self._ids).to_bytes(8, "big")
        now = time.monotonic()
        self._pending[request_id] = Pending(
            origin,
            incoming.payload,
            now,
            now + self._limits.deadline_s,
            typed=incoming.typed,
        )
        self._auth_pool.submit(self._check, request_id, incoming.payload)

    def _check(self, request_id: bytes, payload: bytes) -> None:
        """Runs in the auth pool: parse, authenticate, resolve the Unix identity."""
        try:
            admission = self._admit(payload)
        except Exception:
            log.exception("admission failed")
            admission = Admission.refused(InternalError("internal error while checking it"))
        self._admitted.put((request_id, admission))
        os.write(self._wake_write, b"a")

    def _on_admitted(self) -> None:
        while not self._admitted.empty():
            request_id, admission = self._admitted.get()
            pending = self._pending.get(request_id)
            if pending is None:
                continue  # already answered (deadline)
            pending.info = admission.info
            if admission.deadline_s is not None:
                pending.deadline = pending.received + admission.deadline_s
            if admission.answer is not None:
                self._finish(request_id, admission.answer)
                continue
            if admission.identity is None:
                assert admission.failure is not None
                self._finish(request_id, Failure.of(admission.failure))
                continue
            pending.identity = admission.identity
            if admission.info.type == "cancel":
                self._cancel_waiting(admission.identity, admission.info.tag)
            if admission.info.type == "job" and self._answer_waiting(request_id, admission):
                continue
            if admission.info.type == "index" and not self._index_turn(request_id):
                self._index_waiting.append(request_id)
                continue
            self._route(request_id, admission.identity)

    def _route(self, request_id: bytes, identity: Identity) -> None:
        """Hand an admitted request to its identity's worker (started if need be)."""
        pending = self._pending[request_id]
        key = worker_key(identity)
        failed = self._failed.get(key)
        if failed is not None and failed[1] > time.monotonic():
            self._finish(request_id, failed[0])
            return
        slot = self._workers.get(key) or self._spawn(identity)
        slot.last_used = time.monotonic()
        pending.worker = slot
        if slot.is_ready:
            self._dispatch(slot, request_id)
        else:
            slot.waiting.append(request_id)

    def _index_turn(self, request_id: bytes) -> bool:
        """Whether an index job may start now; it then counts until it is answered."""
        if len(self._index_running) >= self._limits.max_index_jobs:
            return False
        self._index_running.add(request_id)
        return True

    def _start_waiting_index_jobs(self) -> None:
        while self._index_waiting and len(self._index_running) < self._limits.max_index_jobs:
            request_id = self._index_waiting.popleft()
            pending = self._pending.get(request_id)
            if pending is None or pending.identity is None:
                continue  # answered while it waited (deadline, cancel)
            self._index_running.add(request_id)
            self._route(request_id, pending.identity)

    def _cancel_waiting(self, identity: Identity, tag: str) -> None:
        """A cancel answers the identity's waiting index jobs of that tag at once; the
        worker stops a running one."""
        for request_id in list(self._index_waiting):
            pending = self._pending.get(request_id)
            if pending is None or pending.info is None or pending.identity is None:
                continue
            if worker_key(pending.identity) == worker_key(identity) and pending.info.tag == tag:
                self._index_waiting.remove(request_id)
                cancelled = CancelledError(f"index job {tag!r} cancelled before it started")
                self._finish(request_id, Failure.of(cancelled))

    def _answer_waiting(self, request_id: bytes, admission: Admission) -> bool:
        """Answer a ``job`` request for an index job of the ESAF group still waiting here
        (no worker holds a record of it yet); False when none waits with that tag."""
        assert admission.identity is not None
        gid, tag = admission.identity.gid, admission.info.tag
        for position, waiting_id in enumerate(self._index_waiting, start=1):
            waiting = self._pending.get(waiting_id)
            if waiting is None or waiting.info is None or waiting.identity is None:
                continue
            if waiting.identity.gid == gid and waiting.info.tag == tag:
                record = {
                    "tag": tag,
                    "login": waiting.info.login,
                    "state": "queued",
                    "position": position,
                    "started": None,
                }
                echo = echo_job(parse_request(self._pending[request_id].payload))
                self._finish(request_id, Success((echo, json.dumps(record).encode())))
                return True
        return False

    def _dispatch(self, slot: WorkerSlot, request_id: bytes) -> None:
        pending = self._pending[request_id]
        job = link.Job(request_id, int(pending.deadline * 1e9), pending.payload)
        try:
            self._back.send_multipart([slot.socket_id, *link.request(job)])
        except zmq.ZMQError as exc:
            self._on_unreachable(slot, request_id, exc)
            return
        slot.in_flight.add(request_id)

    def _on_unreachable(self, slot: WorkerSlot, request_id: bytes, exc: zmq.ZMQError) -> None:
        """The worker's socket is gone (it died and the zygote has not said so yet): retire
        it and give the request once to a fresh worker of the identity."""
        log.warning("manager: worker %s (uid %d) unreachable: %s", slot.pid, slot.identity.uid, exc)
        unavailable = Failure.of(WorkerError(f"worker unavailable: {exc}; please retry"))
        self._signal(slot, signal.SIGKILL)
        self._retire(slot, unavailable)
        pending = self._pending[request_id]
        if pending.is_retried or pending.identity is None:
            self._finish(request_id, unavailable)
            return
        pending.is_retried = True
        self._route(request_id, pending.identity)

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
            },
        )
        log.info("manager: starting a worker for uid %d gid %d", identity.uid, identity.gid)
        metrics.worker_started()
        return slot

    def _on_worker(self) -> None:
        while True:
            try:
                frames = self._back.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            slot = self._by_socket.get(frames[0])
            if slot is None or len(frames) < 2:
                continue  # a retired worker's late words
            message = frames[1:]
            try:
                if message == [link.HELLO]:
                    self._welcome(slot)
                elif message[0] == link.FAILED:
                    self._on_failed_start(slot, link.read_failed(message))
                else:
                    self._on_reply(slot, *link.read_reply(message))
            except link.LinkError as exc:
                log.error("manager: dropped a malformed message of worker %s: %s", slot.pid, exc)

    def _welcome(self, slot: WorkerSlot) -> None:
        self._back.send_multipart([slot.socket_id, *link.welcome(self._grant(slot.identity))])
        slot.is_ready = True
        waiting, slot.waiting = slot.waiting, []
        for request_id in waiting:
            if request_id in self._pending:
                self._dispatch(slot, request_id)

    def _on_reply(
        self,
        slot: WorkerSlot,
        request_id: bytes,
        reply: Reply,
        times: StageTimes | None = None,
    ) -> None:
        if request_id not in slot.in_flight:
            log.warning(
                "manager: worker %s answered a request it was never sent; ignored", slot.pid
            )
            return
        if times is not None:
            metrics.observe_stage_times(times)
        slot.in_flight.discard(request_id)
        slot.last_used = time.monotonic()
        if request_id in slot.abandoned:
            slot.abandoned.discard(request_id)
        else:
            self._finish(request_id, reply)
        self._kill_if_drained(slot)

    def _on_failed_start(self, slot: WorkerSlot, failure: Failure) -> None:
        identity = slot.identity
        log.warning(
            "manager: the worker for %s (uid %d, esaf %d) could not start: %s",
            identity.login,
            identity.uid,
            identity.esaf,
            failure.message,
        )
        retry_at = time.monotonic() + self._limits.failed_start_retry_s
        self._failed[worker_key(identity)] = (failure, retry_at)
        self._retire(slot, failure)

    def _on_zygote(self) -> None:
        try:
            events = self._zygote.read_events()
        except ConnectionError:
            self._restart_zygote()
            return
        for event in events:
            self._on_zygote_event(event)

    def _on_zygote_event(self, event: ZygoteEvent) -> None:
        if event.kind == "ready":
            self._zygote_deaths = 0
            log.info("manager: worker zygote %d ready", self._zygote.pid)
            if not self._is_ready:
                self._is_ready = True
                log.info(
                    "imageserver serve ready: requests from %s; workers forked by zygote %d",
                    ", ".join(self._broker_endpoints),
                    self._zygote.pid,
                )
                notify("READY=1\nSTATUS=serving")
            return
        if event.kind == "spawned":
            slot = self._by_socket.get(event.key.encode())
            if slot is not None:
                slot.pid = event.pid
                self._by_pid[event.pid] = slot
            return
        slot = self._by_pid.pop(event.pid, None)
        if slot is None or slot.is_gone:
            return
        log.warning("manager: worker %d (uid %d) %s", event.pid, slot.identity.uid, event.status)
        self._retire(
            slot, Failure.of(WorkerError(f"the worker process {event.status}; please retry"))
        )

    def _restart_zygote(self) -> None:
        """The zygote died (its workers with it): answer their requests, start a new one."""
        self._zygote_deaths += 1
        log.error("manager: the worker zygote %d has gone", self._zygote.pid)
        gone = Failure.of(WorkerError("the worker processes were restarted; please retry"))
        for slot in list(self._by_socket.values()):
            self._signal(slot, signal.SIGKILL)
            self._retire(slot, gone)
        self._poller.unregister(self._zygote.fileno())
        self._zygote.close()
        if self._zygote_deaths > ZYGOTE_RESTARTS:
            log.critical("manager: the zygote keeps dying before it is ready; stopping")
            self._stop.set()
            return
        self._zygote = self._start_zygote()
        self._poller.register(self._zygote.fileno(), zmq.POLLIN)

    def _retire(self, slot: WorkerSlot, failure: Failure) -> None:
        """Forget a worker and answer everything it still owed."""
        if self._workers.get(worker_key(slot.identity)) is slot:
            del self._workers[worker_key(slot.identity)]
        if self._by_socket.pop(slot.socket_id, None) is not None:
            metrics.worker_retired()
        slot.is_gone = True
        owed = [*slot.owes, *slot.waiting]
        slot.in_flight.clear()
        slot.abandoned.clear()
        slot.waiting.clear()
        for request_id in owed:
            self._finish(request_id, failure)

    def _drain(self, slot: WorkerSlot) -> None:
        """No new requests for this worker; it goes once it owes nothing more."""
        if not slot.is_draining:
            slot.is_draining = True
            if self._workers.get(worker_key(slot.identity)) is slot:
                del self._workers[worker_key(slot.identity)]
            log.error(
                "manager: worker %s (uid %d) held a request past its deadline; draining it"
                " (%d other requests in flight)",
                slot.pid,
                slot.identity.uid,
                len(slot.owes),
            )
        self._kill_if_drained(slot)

    def _kill_if_drained(self, slot: WorkerSlot) -> None:
        if slot.is_draining and not slot.owes and not slot.is_gone:
            self._signal(slot, signal.SIGKILL)
            self._retire(slot, Failure.of(WorkerError("the worker was replaced")))

    def _signal(self, slot: WorkerSlot, signum: int) -> None:
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
        self._signal(oldest, signal.SIGTERM)
        self._retire(oldest, Failure.of(WorkerError("worker retired")))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for request_id, pending in list(self._pending.items()):
            if pending.deadline > now or request_id not in self._pending:
                continue
            after_s = pending.deadline - pending.received
            timeout = Failure.of(DeadlineError(f"request timed out after {after_s:g} s"))
            self._finish(request_id, timeout)
            slot = pending.worker
            if slot is None or slot.is_gone:
                continue
            if request_id in slot.waiting:
                slot.waiting.remove(request_id)
            if request_id in slot.in_flight:
                slot.abandoned.add(request_id)
                self._drain(slot)
        for slot in list(self._workers.values()):
            idle_s = now - slot.last_used
            if slot.is_ready and not slot.in_flight and idle_s > self._limits.idle_timeout_s:
                self._signal(slot, signal.SIGTERM)
                self._retire(slot, Failure.of(WorkerError("worker retired")))
        for key, (_, retry_at) in list(self._failed.items()):
            if retry_at <= now:
                del self._failed[key]
        metrics.manager_state(
            workers=len(self._by_socket),
            pending=len(self._pending),
            index_waiting=len(self._index_waiting),
        )

    # -- replies ---------------------------------------------------------------------------

    def _finish(self, request_id: bytes, reply: Reply) -> None:
        """The one way a reply leaves: only for a pending request, so never twice."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        metrics.manager_request(
            pending.info.type if pending.info is not None else None,
            reply.code if isinstance(reply, Failure) else None,
            time.monotonic() - pending.received,
        )
        if request_id in self._index_running:
            self._index_running.discard(request_id)
            self._start_waiting_index_jobs()
        if isinstance(reply, Failure) and reply.code in AUDITED_CODES:
            _audit(reply, pending.info)
        self._front_send(pending.origin, reply_frames(reply, typed=pending.typed))

    def _front_send(self, origin: Origin, frames: list[bytes]) -> None:
        index, broker_request_id = origin
        self._links[index].send_reply(broker_request_id, frames)


def _audit(failure: Failure, info: RequestInfo | None) -> None:
    """One WARNING line per refusal: what an admin greps for; never the session token."""
    info = info or RequestInfo()
    log.warning(
        "refused reason=%s code=%s login=%s esaf=%s session=%s type=%s file=%s",
        failure.reason,
        failure.code,
        info.login or "-",
        info.esaf if info.esaf is not None else "-",
        info.session or "-",
        info.type or "-",
        _quoted(info.fn) if info.fn else "-",
    )


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")[:512] + '"'


def _drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 4096):
            return
