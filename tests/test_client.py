"""The client keeps one REQ socket across requests and replaces it after a timeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from imageserver.client import Client, ReplyTimeoutError


class RouterServer:
    """A real ROUTER on loopback that records who asked and answers unless told to stay quiet."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.senders: list[bytes] = []
        self.silent = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if not self.socket.poll(20):
                continue
            sender, empty, body = self.socket.recv_multipart()
            self.senders.append(sender)
            if not self.silent.is_set():
                self.socket.send_multipart([sender, empty, b"", b'{"echo":' + body + b"}"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def server() -> Iterator[RouterServer]:
    running = RouterServer()
    yield running
    running.close()


def test_requests_share_one_socket(server: RouterServer) -> None:
    with Client(server.endpoint) as client:
        first = client.request({"n": 1}, timeout_s=5)
        second = client.request({"n": 2}, timeout_s=5)
    assert first.job == {"echo": {"n": 1}}
    assert second.job == {"echo": {"n": 2}}
    assert len(server.senders) == 2 and server.senders[0] == server.senders[1]


def test_a_timed_out_socket_is_replaced(server: RouterServer) -> None:
    with Client(server.endpoint) as client:
        client.request({"n": 1}, timeout_s=5)
        server.silent.set()
        with pytest.raises(ReplyTimeoutError):
            client.request({"n": 2}, timeout_s=0.2)
        server.silent.clear()
        reply = client.request({"n": 3}, timeout_s=5)  # a wedged REQ socket could not send
    assert reply.job == {"echo": {"n": 3}}
    assert server.senders[0] == server.senders[1] != server.senders[2]
