"""A worker process: one Unix identity (user UID, ESAF GID), a pool of threads running jobs.

Forked from the zygote, it makes a fresh ZeroMQ context, connects to the manager and
completes a hello/welcome handshake *before* dropping privileges (the manager's socket lives
in a root-only directory); the welcome carries its grant, the only secret it ever holds (its
ESAF group's Redis user). Then it caps its heap, becomes its identity, arms its parent-death
signal (a credential change clears it) and builds its jobs, caches included, with the
identity's rights only. A worker that cannot become its identity (no home directory) says
why in one FAILED message, so the manager can answer with that reason instead of retrying.

Only the main thread touches the manager socket; job threads hand their replies back through
a queue and a wake-up pipe. A job whose deadline passed while it queued is skipped. Long jobs
(indexing, `Handler.is_long`) run on threads of their own, so they never hold up a view. The main
loop also notices an idle spell (and lets the caches shrink) and a vanished parent (and exits).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import queue
import resource
import secrets
import select
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeGuard

import zmq

from imageserver import stage_times
from imageserver.errors import (
    DeadlineError,
    ImageServerError,
    InternalError,
    ResourceLimitError,
)
from imageserver.service import link
from imageserver.service.background import allow_priority_back
from imageserver.service.identity import Identity, drop_privileges
from imageserver.service.lifetime import forbid_inspection, is_orphan, set_parent_death_signal
from imageserver.service.reply import Failure, Reply
from imageserver.service.worker_config import WorkerConfig

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_MS = 5000
PARENT_CHECK_MS = 1000
FAILED_LINGER_MS = 2000


class Handler(Protocol):
    """A worker's jobs: one payload in, one typed reply out; never raises for bad input."""

    def __call__(self, payload: bytes) -> Reply: ...

    def release_idle(self) -> None:
        """Give memory back after an idle spell."""


class LongJobs(Protocol):
    """A handler that also runs long jobs (indexing) with their own deadline."""

    def is_long(self, payload: bytes) -> bool: ...

    def run_long(self, payload: bytes, deadline_ns: int) -> Reply: ...


MakeHandler = Callable[[Identity, WorkerConfig, dict[str, Any]], Handler]


def identity_from_spec(spec: dict[str, Any]) -> Identity:
    return Identity(
        uid=int(spec["uid"]),
        gid=int(spec["gid"]),
        home=str(spec["home"]),
        login=str(spec["login"]),
        esaf=int(spec["esaf"]),
    )


def run_worker(
    spec: dict[str, Any],
    config: WorkerConfig,
    *,
    parent_pid: int,
    make_handler: MakeHandler | None = None,
) -> None:
    """Serve requests for one identity until the manager or the zygote goes away."""
    identity = identity_from_spec(spec)
    context = zmq.Context()
    manager = context.socket(zmq.DEALER)
    manager.setsockopt(zmq.LINGER, 0)
    manager.setsockopt(zmq.IDENTITY, str(spec["socket_id"]).encode())
    manager.connect(str(spec["endpoint"]))
    try:
        manager.send(link.HELLO)
        if not manager.poll(HANDSHAKE_TIMEOUT_MS):
            log.error("worker for uid %d: no welcome from the manager; exiting", identity.uid)
            return
        grant = link.read_grant(manager.recv_multipart())
        limit_heap(config.memory_limit_bytes)
        allow_priority_back()  # the live-data thread hands a request its own priority back
        try:
            drop_privileges(identity)
        except ImageServerError as exc:
            log.warning("worker for uid %d cannot start: %s", identity.uid, exc)
            manager.setsockopt(zmq.LINGER, FAILED_LINGER_MS)
            manager.send_multipart(link.failed(Failure.of(exc)))
            return
        set_parent_death_signal(signal.SIGKILL)
        forbid_inspection()
        if is_orphan(parent_pid):
            return
        build = make_handler or _default_handler
        _serve(manager, build(identity, config, grant), config, parent_pid)
    finally:
        manager.close()
        context.term()


def limit_heap(limit_bytes: int) -> None:
    """Cap the data segment (heap and private mappings): an allocation beyond it fails with
    MemoryError in the request that made it, instead of the machine swapping or the OOM
    killer choosing a victim."""
    if limit_bytes > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))


def _default_handler(identity: Identity, config: WorkerConfig, grant: dict[str, Any]) -> Handler:
    from imageserver.cache.renderer import renderer_for_worker, worker_link
    from imageserver.service.index_jobs import IndexJobs
    from imageserver.service.job_board import JobBoard
    from imageserver.service.jobs import Jobs
    from imageserver.service.live import LiveData

    link = worker_link(grant.get("cache"), config.cache)
    renderer = renderer_for_worker(
        {"gid": identity.gid, "home": identity.home}, config.cache, config.limits, link=link
    )
    board = JobBoard(link, identity.gid, config.index.record_ttl_s)
    live = LiveData(config.live, renderer) if _is_live(config) else None
    return Jobs(renderer=renderer, index=IndexJobs(config.index, board), live=live)


def _is_live(config: WorkerConfig) -> bool:
    live = config.live
    return live.watch or live.reduce_new_frames or live.prefetch


def run_job(handler: Callable[[bytes], Reply], job: link.Job, memory_limit_bytes: int) -> Reply:
    """One job to one typed reply, whatever happens inside it."""
    if time.monotonic_ns() > job.deadline_ns:
        return Failure.of(DeadlineError("the request was not started before its deadline"))
    try:
        answer = handler(job.payload)
    except MemoryError:
        answer = None
    except Exception:
        reference = secrets.token_hex(4)
        log.exception("job failed (reference %s)", reference)
        return Failure.of(
            InternalError(f"internal error (reference {reference}); the server log has details")
        )
    if answer is not None and not _is_out_of_memory(answer):
        return answer
    # What the failed request allocated may sit in reference cycles through its traceback:
    # free it now, before the next request meets the ceiling too.
    gc.collect()
    if answer is not None:
        return answer
    limit = f" of {memory_limit_bytes >> 20} MiB" if memory_limit_bytes > 0 else ""
    log.warning("a request needed more memory than the worker's limit%s", limit)
    return Failure.of(
        ResourceLimitError(f"the request needed more memory than the worker's limit{limit}")
    )


def _is_out_of_memory(answer: Reply) -> bool:
    return isinstance(answer, Failure) and answer.code == ResourceLimitError.code


def _serve(manager: zmq.Socket, handler: Handler, config: WorkerConfig, parent_pid: int) -> None:
    replies: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
    wake_read, wake_write = os.pipe()
    poller = zmq.Poller()
    poller.register(manager, zmq.POLLIN)
    poller.register(wake_read, zmq.POLLIN)
    in_flight = 0
    last_active = time.monotonic()
    is_released = True

    def work(job: link.Job) -> None:
        stage_times.begin()
        answer = run_job(handler, job, config.memory_limit_bytes)
        replies.put(link.reply(job.request_id, answer, stage_times.finish()))
        os.write(wake_write, b"x")

    long_jobs = handler if _runs_long_jobs(handler) else None

    def work_long(job: link.Job) -> None:
        assert long_jobs is not None
        run = functools.partial(long_jobs.run_long, deadline_ns=job.deadline_ns)
        answer = run_job(run, job, config.memory_limit_bytes)
        replies.put(link.reply(job.request_id, answer))
        os.write(wake_write, b"x")

    with (
        ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="job") as pool,
        ThreadPoolExecutor(max_workers=config.index.max_jobs, thread_name_prefix="long") as slow,
    ):
        while True:
            events = dict(poller.poll(PARENT_CHECK_MS))
            if is_orphan(parent_pid):
                log.warning("worker %d: the zygote has gone; exiting", os.getpid())
                os._exit(0)
            if manager in events:
                while True:
                    try:
                        frames = manager.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        job = link.read_request(frames)
                    except link.LinkError as exc:
                        log.error("worker: dropped a message from the manager: %s", exc)
                        continue
                    in_flight += 1
                    is_released = False
                    if long_jobs is not None and long_jobs.is_long(job.payload):
                        slow.submit(work_long, job)
                    else:
                        pool.submit(work, job)
            if wake_read in events:
                _drain(wake_read)
                while not replies.empty():
                    manager.send_multipart(replies.get())
                    in_flight -= 1
                    last_active = time.monotonic()
            idle_s = time.monotonic() - last_active
            if not is_released and in_flight == 0 and idle_s >= config.idle_release_s:
                handler.release_idle()
                is_released = True


def _runs_long_jobs(handler: Handler) -> TypeGuard[LongJobs]:
    return callable(getattr(handler, "is_long", None)) and callable(
        getattr(handler, "run_long", None)
    )


def _drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 4096):
            return
