"""Values derived from recently used objects, found by the objects' identity.

Frames and their metadata are unhashable dataclasses (arrays, lists), and the same objects
come back request after request while a frame or view stays in a worker's cache: the 16
tiles of a zoom share one Frame, exact repeats share one view's meta. Keying by ``id`` finds
them in O(1) without hashing their contents; each entry keeps its object alive, so its id
cannot be reused by another object while the entry exists.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class IdentityMemo(Generic[K, V]):
    """``make(obj)`` for the ``capacity`` most recently used objects; thread-safe."""

    def __init__(self, make: Callable[[K], V], capacity: int = 64) -> None:
        self._make = make
        self._capacity = capacity
        self._entries: OrderedDict[int, tuple[K, V]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, obj: K) -> V:
        key = id(obj)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is obj:
                self._entries.move_to_end(key)
                return entry[1]
        value = self._make(obj)  # outside the lock: two threads may both make it, harmlessly
        with self._lock:
            self._entries[key] = (obj, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return value
