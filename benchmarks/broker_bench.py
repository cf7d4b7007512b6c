"""What the broker's bookkeeping costs per request, against the plain ROUTER/DEALER device
it replaced, in the same run: each in its own process, an echo node behind it in another,
REQ clients in this one.

    .venv/bin/python benchmarks/broker_bench.py [--requests N] [--clients C]

Rows: one client's sequential round trips (the hop's latency), then C clients at once (the
hop's throughput on this machine's cores, shared with the node and the clients).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from chain_common import ms_quantile
from imageserver.config import BrokerSettings
from imageserver.transports import node_protocol as protocol
from imageserver.transports.broker import Broker
from imageserver.transports.node_link import BrokerLink

PAYLOAD = json.dumps({"type": "meta", "pid": "a" * 32, "esaf": 61001, "fn": "/data/x.cbf"})


def run_device(front: str, back: str) -> None:
    """The reference: the plain device the proxy used to be."""
    context = zmq.Context()
    front_socket, back_socket = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    front_socket.bind(front)
    back_socket.bind(back)
    zmq.proxy(front_socket, back_socket)


def run_device_node(back: str) -> None:
    """An echo node as the manager used to be: a ROUTER dialling the device's DEALER."""
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.connect(back)
    while True:
        frames = sock.recv_multipart()
        cut = frames.index(b"") + 1
        sock.send_multipart([*frames[:cut], b"", frames[cut]])


def run_broker(front: str, back: str) -> None:
    Broker([front], [back], BrokerSettings(node_capacity=256)).run()


def run_broker_node(back: str) -> None:
    """An echo node speaking the node protocol, through the node's own link."""
    settings = BrokerSettings(node_capacity=256, node_slots=256)
    announcement = protocol.Announcement("echo", 256, 256, 0)
    link = BrokerLink(zmq.Context(), back, settings, lambda: announcement)
    while True:
        link.tick(time.monotonic())
        if link.socket.poll(100):
            for request_id, body in link.receive():
                link.send_reply(request_id, [b"", body[0]])


def round_trips(front: str, count: int) -> list[float]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(front)
    seconds = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            sock.send_string(PAYLOAD)
            if not sock.poll(5000):
                raise RuntimeError("no reply within 5 s")
            sock.recv_multipart()
            seconds.append(time.perf_counter() - started)
    finally:
        sock.close(0)
    return seconds


def crowd(front: str, clients: int, count: int) -> tuple[list[float], float]:
    """``clients`` threads, ``count`` round trips each; all samples and requests per second."""
    results: list[list[float]] = [[] for _ in range(clients)]

    def one(index: int) -> None:
        results[index] = round_trips(front, count)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return [s for samples in results for s in samples], clients * count / elapsed


def measure(
    name: str,
    hop: Callable[[str, str], None],
    node: Callable[[str], None],
    directory: Path,
    args: argparse.Namespace,
) -> list[tuple[str, str, list[float], float]]:
    front, back = f"ipc://{directory}/{name}-front", f"ipc://{directory}/{name}-back"
    processes = [
        multiprocessing.Process(target=hop, args=(front, back), daemon=True),
        multiprocessing.Process(target=node, args=(back,), daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        round_trips(front, 200)  # connected, warm
        time.sleep(0.5)
        sequential = round_trips(front, args.requests)
        parallel, rate = crowd(front, args.clients, max(1, args.requests // args.clients))
        return [
            (name, "1 client", sequential, len(sequential) / sum(sequential)),
            (name, f"{args.clients} clients", parallel, rate),
        ]
    finally:
        for process in processes:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    multiprocessing.set_start_method("fork")
    with tempfile.TemporaryDirectory() as directory:
        rows = [
            *measure("device (reference)", run_device, run_device_node, Path(directory), args),
            *measure("broker", run_broker, run_broker_node, Path(directory), args),
        ]
    print(f"{'hop':<20} {'load':<12} {'median ms':>10} {'p95 ms':>8} {'requests/s':>11}")
    for name, load, seconds, rate in rows:
        print(
            f"{name:<20} {load:<12} {ms_quantile(seconds, 0.5):>10} "
            f"{ms_quantile(seconds, 0.95):>8} {rate:>11.0f}"
        )


if __name__ == "__main__":
    main()
