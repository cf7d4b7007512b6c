"""`imageserver serve`: wire settings, sessions, the zygote and the manager together.

Order matters: the zygote is forked first, while this process has no ZeroMQ context, no
Redis connection and no thread, so the workers it forks inherit none of them. The manager
then provisions the shared cache's per-ESAF Redis users (`cache.acl`) and hands each new
worker its own in the spec; the worker builds its caches after dropping privileges.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from typing import Any

from imageserver.allocator import tune_allocator
from imageserver.cache.acl import CacheAccess
from imageserver.cache.renderer import renderer_for_worker
from imageserver.config import Settings
from imageserver.imaging.reduce import warm_up
from imageserver.service import jobs
from imageserver.service.auth import SessionVerifier, connect_session_store, load_public_key
from imageserver.service.identity import Identity, resolve_identity
from imageserver.service.manager import Manager, ManagerLimits
from imageserver.service.requests import parse_request
from imageserver.service.worker import Handler, run_worker
from imageserver.service.zygote import start_zygote

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Run the process manager until SIGTERM or SIGINT."""
    if os.geteuid() != 0:
        log.warning(
            "not started as root: every request runs as uid %d without per-user isolation",
            os.getuid(),
        )
    public_key = load_public_key(settings.session.public_key_path)  # fail early, before forking
    zygote = start_zygote(
        functools.partial(_worker_main, settings=settings), warm_up=_warm_worker_stack
    )
    cache_access = CacheAccess(settings.cache)
    manager = build_manager(
        settings, zygote=zygote, public_key=public_key, cache_access=cache_access
    )
    _stop_on_signals(manager)
    cache_access.start()
    try:
        manager.run()
    finally:
        cache_access.close()


def build_manager(
    settings: Settings,
    *,
    zygote: Any,
    public_key: Any,
    cache_access: CacheAccess | None = None,
) -> Manager:
    verifier = SessionVerifier(connect_session_store(settings), public_key, settings)

    def admit(payload: bytes) -> Identity:
        request = parse_request(payload, settings.limits)
        session = verifier.authenticate(request.pid, request.esaf)
        return resolve_identity(session.login, request.esaf, settings)

    limits = ManagerLimits(
        deadline_s=settings.workers.request_deadline_s,
        idle_timeout_s=settings.workers.idle_timeout_s,
        max_workers=settings.workers.max_workers,
        worker_threads=settings.workers.threads,
        auth_threads=settings.workers.auth_threads,
    )
    return Manager(
        proxy_endpoints=[settings.proxy.back_endpoint],
        admit=admit,
        zygote=zygote,
        limits=limits,
        worker_extras=cache_access.worker_extras if cache_access is not None else None,
    )


def _warm_worker_stack() -> None:
    tune_allocator()
    warm_up()


def _worker_main(spec: dict[str, Any], *, settings: Settings) -> None:
    run_worker(spec, functools.partial(_make_handler, settings=settings))


def _make_handler(spec: dict[str, Any], *, settings: Settings) -> Handler:
    """The job handler of one worker, with its caches (runs after the privilege drop)."""
    renderer = renderer_for_worker(spec, settings.cache)
    return functools.partial(jobs.handle, limits=settings.limits, renderer=renderer)


def _stop_on_signals(manager: Manager) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, _frame: object) -> None:
        log.info("manager: %s received; stopping", signal.Signals(signum).name)
        manager.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
