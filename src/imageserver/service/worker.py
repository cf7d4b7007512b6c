"""A worker process: one Unix identity (user UID, ESAF GID), a pool of threads running jobs.

Forked from the zygote, it makes a fresh ZeroMQ context (a child must never use its
parent's), connects to the manager and completes a hello/welcome handshake *before*
dropping privileges (the manager's socket lives in a root-only directory), then builds its
request handler (and with it the caches: nothing of them exists with root's rights) and runs
requests in a thread pool. Only the main thread touches the manager socket; job threads
hand their replies back through a queue and a wake-up pipe.
"""

from __future__ import annotations

import logging
import os
import queue
import select
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq

from imageserver.service.identity import Identity, drop_privileges
from imageserver.transports.frames import error_frames

log = logging.getLogger(__name__)

HELLO = b"hello"
WELCOME = b"welcome"
HANDSHAKE_TIMEOUT_MS = 5000

Handler = Callable[[bytes], list[bytes]]
MakeHandler = Callable[[dict[str, Any]], Handler]


def identity_from_spec(spec: dict[str, Any]) -> Identity:
    return Identity(
        uid=int(spec["uid"]),
        gid=int(spec["gid"]),
        home=str(spec["home"]),
        login=str(spec["login"]),
        esaf=int(spec["esaf"]),
    )


def run_worker(spec: dict[str, Any], make_handler: MakeHandler) -> None:
    """Serve requests for one identity until the manager goes away or stops us.

    ``make_handler(spec)`` runs after the privilege drop, in the worker's own identity.
    """
    context = zmq.Context()
    manager = context.socket(zmq.DEALER)
    manager.setsockopt(zmq.LINGER, 0)
    manager.setsockopt(zmq.IDENTITY, spec["socket_id"].encode())
    manager.connect(spec["endpoint"])
    try:
        manager.send(HELLO)
        if not manager.poll(HANDSHAKE_TIMEOUT_MS) or manager.recv() != WELCOME:
            log.error("worker %s: no welcome from the manager; exiting", spec["socket_id"])
            return
        drop_privileges(identity_from_spec(spec))
        _serve(manager, make_handler(spec), int(spec["threads"]))
    finally:
        manager.close(0)
        context.term()


def _serve(manager: zmq.Socket, handler: Handler, threads: int) -> None:
    replies: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
    wake_read, wake_write = os.pipe()
    poller = zmq.Poller()
    poller.register(manager, zmq.POLLIN)
    poller.register(wake_read, zmq.POLLIN)

    def work(request_id: bytes, payload: bytes) -> None:
        try:
            frames = handler(payload)
        except Exception as exc:  # the outermost handler: every request gets its reply
            log.exception("job failed")
            frames = error_frames(f"internal error: {type(exc).__name__}: {exc}")
        replies.put([request_id, *frames])
        os.write(wake_write, b"x")

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="job") as pool:
        while True:
            events = dict(poller.poll())
            if manager in events:
                while True:
                    try:
                        frames = manager.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) != 2:
                        log.error("worker: unexpected message of %d frames", len(frames))
                        continue
                    pool.submit(work, frames[0], frames[1])
            if wake_read in events:
                _drain(wake_read)
                while not replies.empty():
                    manager.send_multipart(replies.get())


def _drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 4096):
            return
