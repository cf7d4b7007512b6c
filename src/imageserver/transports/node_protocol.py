"""The messages between the broker and the nodes (`imageserver serve`), after the ZeroMQ
guide's reliable request-reply patterns (Paranoid Pirate): a node's DEALER dials the
broker's back ROUTER, both sides heartbeat, the broker tracks every request per node.

```
node   → broker   [PROTOCOL, HEARTBEAT, {"node", "capacity", "slots", "in_flight"}]
node   → broker   [PROTOCOL, REPLY, request id, reply body…]   the body the client gets
node   → broker   [PROTOCOL, BYE]                               stopping: send it nothing more
broker → node     [PROTOCOL, REQUEST, request id, payload, extra…]  the client's frames
                                                                    after its delimiter
broker → node     [PROTOCOL, HEARTBEAT]
```

A node's first heartbeat is its announcement: a broker registers a node it has never seen
on any heartbeat, so a restarted broker is re-joined without a handshake. The client's
envelope never leaves the broker; a node answers a request id. Both sides treat the other's
frames as untrusted: a malformed message is dropped with a log line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from imageserver.errors import LinkError

PROTOCOL = b"IMGS1"
HEARTBEAT = b"hb"
REQUEST = b"req"
REPLY = b"rep"
BYE = b"bye"
MAX_ANNOUNCE_BYTES = 1024
REQUEST_ID_BYTES = 8


@dataclass(frozen=True)
class Announcement:
    """What a node says of itself in every heartbeat."""

    node: str
    capacity: int
    """Requests it accepts at once; the broker sends no more."""
    slots: int
    """In-flight requests up to which it keeps its (login, ESAF) affinity."""
    in_flight: int = 0
    """Requests it holds now, from every broker it serves."""


def heartbeat(announcement: Announcement | None = None) -> list[bytes]:
    if announcement is None:
        return [PROTOCOL, HEARTBEAT]
    body = {
        "node": announcement.node,
        "capacity": announcement.capacity,
        "slots": announcement.slots,
        "in_flight": announcement.in_flight,
    }
    return [PROTOCOL, HEARTBEAT, json.dumps(body).encode()]


def request(request_id: bytes, body: Sequence[bytes]) -> list[bytes]:
    return [PROTOCOL, REQUEST, request_id, *body]


def reply(request_id: bytes, body: Sequence[bytes]) -> list[bytes]:
    return [PROTOCOL, REPLY, request_id, *body]


def bye() -> list[bytes]:
    return [PROTOCOL, BYE]


def kind(frames: Sequence[bytes]) -> bytes:
    """The message's kind, after checking the protocol frame."""
    if len(frames) < 2 or bytes(frames[0]) != PROTOCOL:
        raise LinkError("not a message of the node protocol")
    found = bytes(frames[1])
    if found not in (HEARTBEAT, REQUEST, REPLY, BYE):
        raise LinkError(f"unknown message kind {found[:16]!r}")
    return found


def read_announcement(frames: Sequence[bytes]) -> Announcement:
    if len(frames) != 3 or len(frames[2]) > MAX_ANNOUNCE_BYTES:
        raise LinkError("a node's heartbeat must carry one short announcement")
    try:
        body = json.loads(frames[2])
        node = str(body["node"])[:64]
        capacity, slots, in_flight = (int(body[key]) for key in ("capacity", "slots", "in_flight"))
    except (ValueError, TypeError, KeyError) as exc:
        raise LinkError(f"malformed announcement: {exc}") from None
    if capacity < 1 or slots < 0 or in_flight < 0:
        raise LinkError("an announcement's numbers must be positive")
    return Announcement(node, capacity, min(slots, capacity), in_flight)


def read_addressed(frames: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """A request's or reply's id and body."""
    if len(frames) < 4 or len(frames[2]) != REQUEST_ID_BYTES:
        raise LinkError("a request or reply needs an id and a body")
    return bytes(frames[2]), [bytes(frame) for frame in frames[3:]]
