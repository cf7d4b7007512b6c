"""`imageserver serve`: wire settings, sessions, the zygote and the manager together.

The zygote is a separate program that receives a `WorkerConfig` (no secret), so the workers
it forks hold nothing of this process's memory: not the administrative Redis URL, not the
session store's address, not another user's token. The manager provisions the shared
cache's per-ESAF Redis users (`cache.acl`) and grants each new worker its own in the
welcome; the worker builds its caches after dropping privileges.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading

from imageserver.cache.acl import CacheAccess
from imageserver.config import Settings
from imageserver.metrics import start_metrics_server
from imageserver.service.admission import make_admit
from imageserver.service.auth import (
    PublicKey,
    SessionVerifier,
    connect_session_store,
    load_public_key,
)
from imageserver.service.manager import Manager, ManagerLimits
from imageserver.service.worker_config import WorkerConfig
from imageserver.service.zygote import start_zygote

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Run the process manager until SIGTERM or SIGINT."""
    if os.geteuid() != 0:
        log.warning(
            "not started as root: every request runs as uid %d without per-user isolation",
            os.getuid(),
        )
    public_key = load_public_key(settings.session.public_key_path)  # fail early
    cache_access = CacheAccess(settings.cache)
    manager = build_manager(settings, public_key=public_key, cache_access=cache_access)
    _stop_on_signals(manager)
    start_metrics_server(settings.metrics.manager, "manager")
    cache_access.start()
    try:
        manager.run()
    finally:
        cache_access.close()


def build_manager(
    settings: Settings,
    *,
    public_key: PublicKey,
    cache_access: CacheAccess | None = None,
) -> Manager:
    verifier = SessionVerifier(connect_session_store(settings), public_key, settings)
    limits = ManagerLimits(
        deadline_s=settings.workers.request_deadline_s,
        idle_timeout_s=settings.workers.idle_timeout_s,
        max_workers=settings.workers.max_workers,
        worker_threads=settings.workers.threads,
        auth_threads=settings.workers.auth_threads,
        failed_start_retry_s=settings.workers.failed_start_retry_s,
        max_index_jobs=settings.index.max_jobs,
    )
    return Manager(
        broker_endpoints=[settings.proxy.back_endpoint],
        broker=settings.broker,
        admit=make_admit(settings, verifier),
        start_zygote=functools.partial(start_zygote, WorkerConfig.from_settings(settings)),
        limits=limits,
        grant=cache_access.worker_extras if cache_access is not None else None,
    )


def _stop_on_signals(manager: Manager) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, _frame: object) -> None:
        log.info("manager: %s received; stopping", signal.Signals(signum).name)
        manager.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
