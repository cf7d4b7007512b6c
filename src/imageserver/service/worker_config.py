"""What the zygote and its workers are told: the settings a worker needs, and no secret.

The manager holds the whole `Settings`, with the administrative Redis URL of the cache and
the session store's address. A worker may be taken over by a malicious file, so it gets this
subset instead: request limits, the memory cache's sizes, the shared cache's timings (not its
URL: each worker learns its own ESAF's Redis user from the manager's grant), thread count,
memory ceiling and log level. It crosses to the zygote as JSON, before any worker exists.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from imageserver.cache.memory import automatic_budget_bytes
from imageserver.config import (
    CacheSettings,
    IndexSettings,
    LimitSettings,
    LiveSettings,
    Settings,
    section_from_table,
)

HEAP_HEADROOM_BYTES = 2 << 30
"""Above the cache budget: decode buffers of a few 16M frames in flight, numba, libraries."""


@dataclass(frozen=True)
class WorkerConfig:
    limits: LimitSettings
    cache: CacheSettings
    """``redis_url``, ``sentinels`` and ``sentinel_password`` are always empty here."""
    threads: int
    memory_limit_bytes: int
    """The heap ceiling (RLIMIT_DATA) in bytes; 0 for none."""
    idle_release_s: float
    log_level: str
    index: IndexSettings = dataclasses.field(default_factory=IndexSettings)
    live: LiveSettings = dataclasses.field(default_factory=LiveSettings)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        cache = dataclasses.replace(
            settings.cache, redis_url="", sentinels="", sentinel_password=""
        )
        return cls(
            limits=settings.limits,
            cache=cache,
            threads=settings.workers.threads,
            memory_limit_bytes=_memory_limit(settings),
            idle_release_s=min(60.0, settings.workers.idle_timeout_s / 2),
            log_level=settings.logging.level,
            index=settings.index,
            live=settings.live,
        )

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WorkerConfig:
        table: dict[str, Any] = json.loads(data)
        return cls(
            limits=section_from_table(LimitSettings, table["limits"]),
            cache=section_from_table(CacheSettings, table["cache"]),
            threads=int(table["threads"]),
            memory_limit_bytes=int(table["memory_limit_bytes"]),
            idle_release_s=float(table["idle_release_s"]),
            log_level=str(table["log_level"]),
            index=section_from_table(IndexSettings, table.get("index", {})),
            live=section_from_table(LiveSettings, table.get("live", {})),
        )


def _memory_limit(settings: Settings) -> int:
    configured = settings.workers.memory_limit_bytes
    if configured >= 0:
        return configured
    budget = settings.cache.memory_budget_bytes
    if budget < 0:
        budget = automatic_budget_bytes()
    return budget + HEAP_HEADROOM_BYTES
