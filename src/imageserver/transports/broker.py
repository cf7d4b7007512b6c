"""The broker (`imageserver proxy`): clients on a ROUTER, nodes dialling in to another.

The ZeroMQ guide's load-balancing broker with heartbeats (Paranoid Pirate), so no request is
lost and none waits on a node that cannot answer:

- Every node announces its capacity in each heartbeat; the broker sends a node no more than
  that many requests and tracks each one until its reply comes back.
- A node silent for ``node_timeout_s`` (killed, stopped, cut off) or saying goodbye is lost:
  each of its requests is re-sent once to another node when it only reads (`IDEMPOTENT`),
  otherwise answered at once with an error. A late reply of a lost node is dropped, so a
  client never gets two.
- Requests of one session and ESAF go to the same node (rendezvous hashing over the healthy
  nodes) while it has fewer than its announced ``slots`` in flight, so its workers' memory
  caches hit; otherwise to the least loaded node with room.
- When every node is full, requests wait here in order, at most ``queue_limit`` of them and
  each at most ``queue_wait_s``; beyond that the client gets a `BusyError` at once.

The wire contract of clients is unchanged: legacy REQ clients and the gateway's DEALER send
the same frames and get the same replies (a typed error for a client that asked for them).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field

import zmq

from imageserver import metrics
from imageserver.config import BrokerSettings
from imageserver.errors import BusyError, ImageServerError, LinkError, WorkerError
from imageserver.service.reply import Failure
from imageserver.service.systemd import notify
from imageserver.transports import node_protocol as protocol
from imageserver.transports.frames import reply_frames, split_request

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"jpeg", "spots", "meta", "analysis", "list", "latest", "job", "whoami"})
"""Request types that only read: safe to run again on another node when one is lost."""
MAX_ATTEMPTS = 2
MAX_MESSAGE_BYTES = 64 << 20
"""A client frame beyond this drops its connection (ZeroMQ's own check, before any memory is
spent): far above any request (the nodes refuse more than `[limits] max_request_bytes`)."""
TICK_S = 0.05


@dataclass
class Node:
    identity: bytes
    name: str
    capacity: int
    slots: int
    last_seen: float
    in_flight: set[bytes] = field(default_factory=set)

    @property
    def has_room(self) -> bool:
        return len(self.in_flight) < self.capacity

    @property
    def load(self) -> float:
        return len(self.in_flight) / self.capacity


@dataclass
class Tracked:
    """A client's request from arrival to its one reply."""

    envelope: tuple[bytes, ...]
    body: list[bytes]
    """The client's frames after its delimiter: payload, then any extra frames."""
    typed: bool
    type: str
    affinity: bytes | None
    received: float
    node: bytes | None = None
    tried: set[bytes] = field(default_factory=set)

    @property
    def is_idempotent(self) -> bool:
        return self.type in IDEMPOTENT


class Broker:
    def __init__(
        self,
        front_endpoints: list[str],
        back_endpoints: list[str],
        settings: BrokerSettings,
        context: zmq.Context | None = None,
    ) -> None:
        self._settings = settings
        self._context = context or zmq.Context.instance()
        self._front = self._context.socket(zmq.ROUTER)
        self._back = self._context.socket(zmq.ROUTER)
        for sock in (self._front, self._back):
            sock.setsockopt(zmq.LINGER, 0)
        self._back.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._front.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        for endpoint in front_endpoints:
            self._front.bind(endpoint)
        for endpoint in back_endpoints:
            self._back.bind(endpoint)
        self._endpoints = (front_endpoints, back_endpoints)
        self._nodes: dict[bytes, Node] = {}
        self._tracked: dict[bytes, Tracked] = {}
        self._queue: collections.deque[bytes] = collections.deque()
        self._ids = itertools.count(1)
        self._next_heartbeat = 0.0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        front, back = self._endpoints
        log.info(
            "imageserver broker ready: clients on %s, nodes on %s",
            ", ".join(front),
            ", ".join(back),
        )
        notify("READY=1\nSTATUS=brokering")
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        poller.register(self._back, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(TICK_S * 1000)))
                if self._back in events:
                    self._on_back()
                if self._front in events:
                    self._on_front()
                self._tick(time.monotonic())
        except zmq.ContextTerminated:
            pass
        finally:
            for request_id in list(self._tracked):
                self._answer(request_id, WorkerError("the broker is shutting down; please retry"))
            self._front.close(0)
            self._back.close(0)
            log.info("broker stopped")

    # -- clients ---------------------------------------------------------------------------

    def _on_front(self) -> None:
        while True:
            try:
                frames = self._front.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            incoming = split_request(frames)
            if incoming.problem is not None:
                self._send_front(list(incoming.envelope), [incoming.problem.encode()])
                continue
            request_type, affinity = _routing_facts(incoming.payload)
            request_id = next(self._ids).to_bytes(protocol.REQUEST_ID_BYTES, "big")
            self._tracked[request_id] = Tracked(
                envelope=incoming.envelope,
                body=[bytes(frame) for frame in frames[len(incoming.envelope) :]],
                typed=incoming.typed,
                type=request_type,
                affinity=affinity,
                received=time.monotonic(),
            )
            if not self._dispatch(request_id):
                self._enqueue(request_id, at_front=False)

    def _enqueue(self, request_id: bytes, *, at_front: bool) -> None:
        if len(self._queue) >= self._settings.queue_limit:
            self._answer(request_id, _busy(self._nodes))
            return
        if at_front:
            self._queue.appendleft(request_id)
        else:
            self._queue.append(request_id)
        metrics.broker_queue_depth(len(self._queue))

    def _dispatch(self, request_id: bytes) -> bool:
        """Send a request to the node it belongs on; False when no node has room."""
        tracked = self._tracked[request_id]
        while True:
            node = self._choose(tracked)
            if node is None:
                return False
            try:
                self._back.send_multipart(
                    [node.identity, *protocol.request(request_id, tracked.body)], zmq.NOBLOCK
                )
            except zmq.ZMQError as exc:  # the node's connection is gone (or its pipe full)
                self._lose(node, f"unreachable ({exc})")
                continue
            tracked.node = node.identity
            tracked.tried.add(node.identity)
            node.in_flight.add(request_id)
            metrics.broker_node_in_flight(node.name, len(node.in_flight))
            return True

    def _choose(self, tracked: Tracked) -> Node | None:
        candidates = [n for n in self._nodes.values() if n.identity not in tracked.tried]
        if not candidates:
            return None
        if tracked.affinity is not None:
            home = max(candidates, key=lambda n: _weight(tracked.affinity or b"", n))
            if len(home.in_flight) < home.slots:
                return home
        open_nodes = [n for n in candidates if n.has_room]
        return min(open_nodes, key=lambda n: n.load) if open_nodes else None

    def _answer(self, request_id: bytes, error: ImageServerError) -> None:
        tracked = self._tracked.pop(request_id, None)
        if tracked is None:
            return
        failure = Failure.of(error)
        metrics.broker_request(tracked.type, failure.code, time.monotonic() - tracked.received)
        self._send_front([*tracked.envelope], reply_frames(failure, typed=tracked.typed))

    def _send_front(self, envelope: list[bytes], body: list[bytes]) -> None:
        try:
            self._front.send_multipart([*envelope, *body], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("broker: could not send a reply: %s", exc)

    # -- nodes -----------------------------------------------------------------------------

    def _on_back(self) -> None:
        while True:
            try:
                frames = self._back.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, message = bytes(frames[0]), frames[1:]
            try:
                self._on_node_message(identity, message)
            except LinkError as exc:
                log.warning("broker: dropped a malformed message from a node: %s", exc)

    def _on_node_message(self, identity: bytes, message: list[bytes]) -> None:
        kind = protocol.kind(message)
        node = self._nodes.get(identity)
        now = time.monotonic()
        if kind == protocol.HEARTBEAT:
            announcement = protocol.read_announcement(message)
            if node is None:
                node = Node(identity, announcement.node, 1, 0, now)
                self._nodes[identity] = node
                log.info(
                    "broker: node %s joined (capacity %d)", announcement.node, announcement.capacity
                )
                self._count_nodes()
            node.name, node.capacity = announcement.node, announcement.capacity
            node.slots, node.last_seen = announcement.slots, now
            self._drain_queue()
        elif kind == protocol.REPLY:
            request_id, body = protocol.read_addressed(message)
            if node is None:
                return  # a node this broker does not know (yet): its requests went elsewhere
            node.last_seen = now
            self._on_reply(node, request_id, body)
        elif kind == protocol.BYE and node is not None:
            self._lose(node, "said goodbye")

    def _on_reply(self, node: Node, request_id: bytes, body: list[bytes]) -> None:
        tracked = self._tracked.get(request_id)
        node.in_flight.discard(request_id)
        metrics.broker_node_in_flight(node.name, len(node.in_flight))
        if tracked is None or tracked.node != node.identity:
            return  # answered already (re-sent after this node was lost)
        del self._tracked[request_id]
        metrics.broker_request(tracked.type, _outcome(body), time.monotonic() - tracked.received)
        self._send_front([*tracked.envelope], body)
        self._drain_queue()

    def _lose(self, node: Node, why: str) -> None:
        """Forget a node; re-send what only reads, answer the rest."""
        del self._nodes[node.identity]
        log.warning(
            "broker: node %s lost (%s) with %d requests in flight",
            node.name,
            why,
            len(node.in_flight),
        )
        metrics.broker_node_lost()
        metrics.broker_node_removed(node.name)
        self._count_nodes()
        resend = []
        for request_id in sorted(node.in_flight):
            tracked = self._tracked.get(request_id)
            if tracked is None or tracked.node != node.identity:
                continue
            tracked.node = None
            if tracked.is_idempotent and len(tracked.tried) < MAX_ATTEMPTS:
                resend.append(request_id)
            else:
                self._answer(
                    request_id,
                    WorkerError(f"the image server node handling this request {why}; please retry"),
                )
        node.in_flight.clear()
        for request_id in reversed(resend):
            metrics.broker_resent()
            if not self._dispatch(request_id):
                self._enqueue(request_id, at_front=True)

    def _drain_queue(self) -> None:
        while self._queue and self._dispatch(self._queue[0]):
            self._queue.popleft()
        metrics.broker_queue_depth(len(self._queue))

    def _count_nodes(self) -> None:
        """Healthy: heard within two heartbeats; the rest are late, not yet lost."""
        fresh_after = time.monotonic() - 2 * self._settings.heartbeat_s
        healthy = sum(node.last_seen >= fresh_after for node in self._nodes.values())
        metrics.broker_nodes(healthy, len(self._nodes))

    # -- time ------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        for node in list(self._nodes.values()):
            if now - node.last_seen > self._settings.node_timeout_s:
                self._lose(node, f"stopped responding ({self._settings.node_timeout_s:g} s)")
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self._settings.heartbeat_s
            self._count_nodes()
            for node in list(self._nodes.values()):
                try:
                    self._back.send_multipart([node.identity, *protocol.heartbeat()], zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    self._lose(node, f"unreachable ({exc})")
        self._expire_queued(now)

    def _expire_queued(self, now: float) -> None:
        """Requests that waited ``queue_wait_s`` for room get busy (queued ones are always
        tracked: an answer leaves the queue with them)."""
        wait_s = self._settings.queue_wait_s
        expired = [r for r in self._queue if now - self._tracked[r].received > wait_s]
        if not expired:
            return
        gone = set(expired)
        self._queue = collections.deque(r for r in self._queue if r not in gone)
        for request_id in expired:
            self._answer(request_id, _busy(self._nodes))
        metrics.broker_queue_depth(len(self._queue))


def _routing_facts(payload: bytes) -> tuple[str, bytes | None]:
    """The request's type and its affinity key (session and ESAF), read without trusting it:
    a payload the node will refuse still goes to a node, which says why."""
    try:
        request = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "", None
    if not isinstance(request, dict):
        return "", None
    request_type = request.get("type")
    request_type = request_type[:32] if isinstance(request_type, str) else ""
    pid, esaf = request.get("pid"), request.get("esaf")
    if not isinstance(pid, str):
        return request_type, None
    return request_type, hashlib.blake2b(f"{pid}\0{esaf}".encode(), digest_size=8).digest()


def _weight(affinity: bytes, node: Node) -> int:
    """Rendezvous hashing: the key's node is the one of highest weight, so a node joining or
    leaving moves only its own share of keys."""
    digest = hashlib.blake2b(affinity + node.name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _busy(nodes: dict[bytes, Node]) -> ImageServerError:
    if not nodes:
        return BusyError("no image server node is connected; please retry")
    return BusyError("all image server nodes are busy; please retry")


def _outcome(body: list[bytes]) -> str | None:
    """None for a success body, else the typed error's code (``error`` for a legacy one)."""
    if body and body[0] == b"":
        return None
    if len(body) >= 2:
        try:
            return str(json.loads(body[1]).get("code", "error"))[:32]
        except (ValueError, AttributeError):
            pass
    return "error"


def run_broker(
    front_endpoints: list[str],
    back_endpoints: list[str],
    settings: BrokerSettings,
    metrics_address: str = "",
) -> None:
    """Bind and broker until stopped (SIGTERM, SIGINT)."""
    broker = Broker(front_endpoints, back_endpoints, settings)
    metrics.start_metrics_server(metrics_address, "broker")
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: broker.stop())
    broker.run()
