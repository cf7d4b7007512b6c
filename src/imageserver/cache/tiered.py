"""TieredCache: the process's memory first, then the shared Redis tier, written through.

As zarr's CacheStore puts one store in front of another: a read tries memory, then Redis
(keeping what it found in memory), then computes and stores in both. Single-flight holds at
both levels: threads of one worker wait on the memory tier's flight, processes on the shared
tier's claim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from imageserver.cache.keys import CacheKey
from imageserver.cache.memory import MemoryCache
from imageserver.cache.shared import SharedCache

V = TypeVar("V")


class TieredCache(Generic[V]):
    """``memory`` in front of ``shared`` (None: memory only).

    ``memory`` may be a cache of mixed values shared with other users (any ``MemoryCache``);
    this tier only ever stores and reads values of type V under its keys.
    """

    def __init__(self, memory: MemoryCache[Any], shared: SharedCache[V] | None) -> None:
        self.memory = memory
        self.shared = shared

    def get(self, key: CacheKey) -> V | None:
        value: V | None = self.memory.get(key)
        if value is None and self.shared is not None:
            value = self.shared.get(key)
            if value is not None:
                self.memory.put(key, value)
        return value

    def put(self, key: CacheKey, value: V) -> bool:
        """Store in both tiers; True if at least one kept it."""
        kept = self.memory.put(key, value)
        if self.shared is not None:
            kept = self.shared.put(key, value) or kept
        return kept

    def get_or_compute(self, key: CacheKey, compute: Callable[[], V]) -> V:
        return self.fetch(key, compute)[0]

    def fetch(
        self, key: CacheKey, compute: Callable[[], V], *, claim: bool = True
    ) -> tuple[V, str]:
        """The value and where it came from: "memory", "shared" or "computed".

        ``claim=False``: a cheap computation, not worth the shared tier's cross-process claim.
        """
        where = ["memory"]

        def computed() -> V:
            where[0] = "computed"
            return compute()

        def from_shared() -> V:
            where[0] = "shared"
            if self.shared is None:
                return computed()
            return self.shared.get_or_compute(key, computed, claim=claim)

        value: V = self.memory.get_or_compute(key, from_shared)
        return value, where[0]
