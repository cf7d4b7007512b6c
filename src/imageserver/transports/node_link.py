"""A node's connection to one broker: a DEALER that heartbeats and re-joins on silence.

The node dials out (nothing dials into a data node). Its heartbeat carries its announcement
(`node_protocol.Announcement`), so a broker that restarted knows the node again from the next
heartbeat. A broker silent for twice the node timeout is presumed gone: the socket is
replaced by a fresh one (a new identity, as the ZeroMQ guide's Paranoid Pirate worker does),
which also recovers from a half-open TCP connection. Replies to a broker that cannot take
them are dropped: that broker already answered their clients, or lost them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import zmq

from imageserver.config import BrokerSettings
from imageserver.errors import LinkError
from imageserver.transports import node_protocol as protocol

log = logging.getLogger(__name__)

CLOSE_LINGER_MS = 500
"""How long a stopping node's goodbye may take to leave."""


class BrokerLink:
    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        settings: BrokerSettings,
        announce: Callable[[], protocol.Announcement],
    ) -> None:
        self.endpoint = endpoint
        self._context = context
        self._settings = settings
        self._announce = announce
        self._next_heartbeat = 0.0
        self._heard = time.monotonic()
        self.socket = self._open()

    def _open(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a broker that is not there
        sock.connect(self.endpoint)
        self._heard = time.monotonic()
        self._next_heartbeat = 0.0
        return sock

    def receive(self) -> list[tuple[bytes, list[bytes]]]:
        """The requests waiting on the socket (heartbeats only refresh the broker's life)."""
        requests: list[tuple[bytes, list[bytes]]] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return requests
            try:
                kind = protocol.kind(frames)
                if kind == protocol.REQUEST:
                    requests.append(protocol.read_addressed(frames))
                elif kind != protocol.HEARTBEAT:
                    raise LinkError(f"a broker does not send {kind!r}")
            except LinkError as exc:
                log.warning("node: dropped a malformed message from %s: %s", self.endpoint, exc)
                continue
            self._heard = time.monotonic()

    def send_reply(self, request_id: bytes, body: list[bytes]) -> None:
        try:
            self.socket.send_multipart(protocol.reply(request_id, body), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("node: a reply to broker %s was dropped: %s", self.endpoint, exc)

    def tick(self, now: float) -> zmq.Socket | None:
        """Heartbeat when due; re-join a silent broker. Returns the old socket when it was
        replaced, for the caller to unregister (it is closed already)."""
        replaced = None
        if now - self._heard > 2 * self._settings.node_timeout_s:
            log.warning(
                "node: broker %s silent for %.1f s; joining it again",
                self.endpoint,
                now - self._heard,
            )
            replaced = self.socket
            replaced.close(0)
            self.socket = self._open()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self._settings.heartbeat_s
            with contextlib.suppress(zmq.Again):  # not connected yet: it hears the next one
                self.socket.send_multipart(protocol.heartbeat(self._announce()), zmq.NOBLOCK)
        return replaced

    def close(self) -> None:
        """Say goodbye (the broker re-sends or answers what this node still holds)."""
        try:
            self.socket.send_multipart(protocol.bye(), zmq.NOBLOCK)
            self.socket.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        except zmq.ZMQError:
            pass
        self.socket.close()
