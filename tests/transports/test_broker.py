"""The broker with real ZeroMQ sockets: nodes scripted here (a DEALER speaking the node
protocol), clients as REQ and DEALER sockets. The chain with real `serve` nodes is in
tests/service/test_nodes.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from imageserver.config import BrokerSettings
from imageserver.transports import node_protocol as protocol
from imageserver.transports.broker import MAX_MESSAGE_BYTES, Broker
from imageserver.transports.node_link import BrokerLink

FAST = BrokerSettings(heartbeat_s=0.1, node_timeout_s=0.5, queue_limit=4, queue_wait_s=0.5)


class Endpoints:
    def __init__(self, directory: Path) -> None:
        self.front = f"ipc://{directory}/front"
        self.back = f"ipc://{directory}/back"


class RunningBroker:
    def __init__(self, endpoints: Endpoints, settings: BrokerSettings) -> None:
        self.context = zmq.Context()
        self.broker = Broker([endpoints.front], [endpoints.back], settings, self.context)
        self.thread = threading.Thread(target=self.broker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.broker.stop()
        self.thread.join(5)
        self.context.term()


@pytest.fixture
def endpoints(tmp_path: Path) -> Endpoints:
    return Endpoints(tmp_path)


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def start_broker(endpoints: Endpoints, settings: BrokerSettings = FAST) -> RunningBroker:
    return RunningBroker(endpoints, settings)


class FakeNode:
    """A node that heartbeats on demand and answers only when told."""

    def __init__(self, context: zmq.Context, endpoints: Endpoints, name: str, capacity: int = 8):
        self.name = name
        self.capacity = capacity
        self.slots = capacity
        self.link = BrokerLink(context, endpoints.back, FAST, self.announcement)
        self.received: list[tuple[bytes, list[bytes]]] = []

    def announcement(self) -> protocol.Announcement:
        return protocol.Announcement(self.name, self.capacity, self.slots, 0)

    def pump(self, seconds: float = 0.2) -> None:
        """Heartbeat and collect requests for a while."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.link.tick(time.monotonic())
            if self.link.socket.poll(20):
                self.received.extend(self.link.receive())

    def answer_all(self, text: bytes = b"done") -> None:
        for request_id, body in self.received:
            self.link.send_reply(request_id, [b"", body[0], text])
        self.received.clear()


def request(
    context: zmq.Context, endpoints: Endpoints, payload: dict[str, object] | bytes
) -> zmq.Socket:
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoints.front)
    sock.send(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    return sock


def reply_of(sock: zmq.Socket, timeout_s: float = 3.0) -> list[bytes]:
    assert sock.poll(int(timeout_s * 1000)), "no reply"
    frames = sock.recv_multipart()
    sock.close(0)
    return frames


def pump_all(nodes: list[FakeNode], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for node in nodes:
            node.pump(0.02)


def jpeg(pid: str, esaf: int = 1, fn: str = "/data/a.cbf") -> dict[str, object]:
    return {"type": "jpeg", "pid": pid, "esaf": esaf, "fn": fn}


def test_a_request_goes_to_a_node_and_its_reply_back(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        node = FakeNode(context, endpoints, "a")
        node.pump(0.3)
        client = request(context, endpoints, jpeg("s1"))
        pump_all([node], 0.3)
        assert len(node.received) == 1
        node.answer_all()
        frames = reply_of(client)
        assert frames[0] == b"" and frames[-1] == b"done"
    finally:
        broker.stop()


def test_one_session_and_esaf_stay_on_one_node(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        nodes = [FakeNode(context, endpoints, name) for name in ("a", "b", "c")]
        pump_all(nodes, 0.3)
        for session in ("s1", "s2", "s3", "s4", "s5", "s6"):
            clients = [request(context, endpoints, jpeg(session, fn=f"/f{i}")) for i in range(3)]
            pump_all(nodes, 0.2)
            holders = [node.name for node in nodes if node.received]
            assert len(holders) == 1, f"{session} spread over {holders}"
            assert sum(len(node.received) for node in nodes) == 3
            for node in nodes:
                node.answer_all()
            for client in clients:
                reply_of(client)
    finally:
        broker.stop()


def test_a_saturated_home_node_overflows_to_the_least_loaded(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        nodes = [FakeNode(context, endpoints, name) for name in ("a", "b")]
        for node in nodes:
            node.slots = 2
        pump_all(nodes, 0.3)
        clients = [request(context, endpoints, jpeg("s1", fn=f"/f{i}")) for i in range(4)]
        pump_all(nodes, 0.3)
        assert sorted(len(node.received) for node in nodes) == [2, 2]
        for node in nodes:
            node.answer_all()
        for client in clients:
            assert reply_of(client)[0] == b""
    finally:
        broker.stop()


def test_a_silent_node_s_reads_are_re_sent_and_its_writes_answered(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        a = FakeNode(context, endpoints, "a")
        a.pump(0.3)
        view = request(context, endpoints, jpeg("s1"))
        index = request(context, endpoints, {"type": "index", "pid": "s1", "esaf": 1, "tag": "t"})
        a.pump(0.2)
        assert len(a.received) == 2
        b = FakeNode(context, endpoints, "b")
        b.pump(0.3)  # a stays silent from now on
        started = time.monotonic()
        pump_all([b], 1.0)
        assert len(b.received) == 1 and json.loads(b.received[0][1][0])["type"] == "jpeg"
        error = reply_of(index, timeout_s=2.0)
        assert time.monotonic() - started < 2.0
        assert b"stopped responding" in error[0]
        a.answer_all(b"late")  # the lost node wakes up: its late answers are dropped
        b.answer_all(b"from b")
        assert reply_of(view)[-1] == b"from b"
    finally:
        broker.stop()


def test_a_node_that_says_goodbye_is_lost_at_once(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        a, b = FakeNode(context, endpoints, "a"), FakeNode(context, endpoints, "b")
        pump_all([a, b], 0.3)
        a.slots = b.slots = 0  # no affinity: least loaded, i.e. spread
        pump_all([a, b], 0.2)
        clients = [request(context, endpoints, jpeg("s1", fn=f"/f{i}")) for i in range(4)]
        pump_all([a, b], 0.2)
        assert a.received and b.received
        a.link.close()
        pump_all([b], 0.3)
        assert len(b.received) == 4
        b.answer_all()
        for client in clients:
            assert reply_of(client)[-1] == b"done"
    finally:
        broker.stop()


def test_full_nodes_queue_then_busy_at_once_beyond_the_bound(endpoints, context) -> None:
    broker = start_broker(endpoints)  # queue_limit 4, queue_wait_s 0.5
    try:
        a = FakeNode(context, endpoints, "a", capacity=1)
        a.pump(0.3)
        clients = [request(context, endpoints, jpeg("s1", fn=f"/f{i}")) for i in range(6)]
        a.pump(0.1)
        assert len(a.received) == 1
        busy = reply_of(clients[5], timeout_s=0.3)  # 1 at the node, 4 queued, the 6th refused
        assert b"busy" in busy[0]
        a.answer_all()
        a.pump(0.1)
        assert len(a.received) == 1  # the first queued one took the freed place
        assert reply_of(clients[0])[-1] == b"done"
        # the rest waited their queue_wait_s: busy, not a hang
        for client in clients[2:5]:
            assert b"busy" in reply_of(client, timeout_s=1.0)[0]
        a.answer_all()
        assert reply_of(clients[1])[-1] == b"done"
    finally:
        broker.stop()


def test_no_node_connected_is_an_answer_not_a_hang(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        client = request(context, endpoints, jpeg("s1"))
        assert b"no image server node" in reply_of(client, timeout_s=2.0)[0]
        typed = context.socket(zmq.DEALER)
        typed.connect(endpoints.front)
        typed.send_multipart([b"", json.dumps(jpeg("s1")).encode(), b"typed"])
        assert typed.poll(2000)
        frames = typed.recv_multipart()
        assert json.loads(frames[-1])["code"] == "busy"
        typed.close(0)
    finally:
        broker.stop()


def test_malformed_messages_are_dropped_and_service_goes_on(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        rogue = context.socket(zmq.DEALER)
        rogue.connect(endpoints.back)
        for junk in (
            [b"junk"],
            [protocol.PROTOCOL, b"nope"],
            [protocol.PROTOCOL, protocol.HEARTBEAT, b"{not json"],
            [protocol.PROTOCOL, protocol.HEARTBEAT, b'{"node": "x", "capacity": -1}'],
            [protocol.PROTOCOL, protocol.REPLY, b"short", b""],
        ):
            rogue.send_multipart(junk)
        no_delimiter = context.socket(zmq.DEALER)
        no_delimiter.connect(endpoints.front)
        no_delimiter.send(b"{}")
        assert no_delimiter.poll(2000)
        assert b"delimiter" in no_delimiter.recv_multipart()[-1]
        node = FakeNode(context, endpoints, "a")
        node.pump(0.3)
        clients = [request(context, endpoints, data) for data in (b"not json", b'{"type": 3}')]
        node.pump(0.2)
        assert [body[0] for _, body in node.received] == [b"not json", b'{"type": 3}']
        node.answer_all()  # the node says what is wrong with them
        for client in clients:
            assert reply_of(client)[-1] == b"done"
        rogue.close(0)
        no_delimiter.close(0)
    finally:
        broker.stop()


def test_a_restarted_broker_is_re_joined_by_its_nodes(endpoints, context) -> None:
    broker = start_broker(endpoints)
    node = FakeNode(context, endpoints, "a")
    node.pump(0.3)
    broker.stop()
    broker = start_broker(endpoints)
    try:
        node.pump(0.5)  # heartbeats reach the new broker: it knows the node again
        client = request(context, endpoints, jpeg("s1"))
        node.pump(0.3)
        node.answer_all()
        assert reply_of(client)[-1] == b"done"
    finally:
        broker.stop()


def test_a_node_re_joins_a_broker_that_went_silent(endpoints, context) -> None:
    broker = start_broker(endpoints)
    node = FakeNode(context, endpoints, "a")
    node.pump(0.3)
    first = node.link.socket
    broker.stop()
    node.pump(1.2)  # silent for more than 2 × node_timeout_s: a fresh socket
    assert node.link.socket is not first
    broker = start_broker(endpoints)
    try:
        node.pump(0.5)
        client = request(context, endpoints, jpeg("s1"))
        node.pump(0.3)
        node.answer_all()
        assert reply_of(client)[-1] == b"done"
    finally:
        broker.stop()


def test_an_oversized_message_is_dropped_and_service_goes_on(endpoints, context) -> None:
    broker = start_broker(endpoints)
    try:
        node = FakeNode(context, endpoints, "a")
        node.pump(0.3)
        huge = context.socket(zmq.DEALER)
        huge.setsockopt(zmq.LINGER, 0)
        huge.connect(endpoints.front)
        huge.send_multipart([b"", b"x" * (MAX_MESSAGE_BYTES + 1)])
        client = request(context, endpoints, jpeg("s1"))
        node.pump(0.3)
        assert [json.loads(body[0])["type"] for _, body in node.received] == ["jpeg"]
        node.answer_all()
        assert reply_of(client)[-1] == b"done"
        huge.close(0)
    finally:
        broker.stop()
