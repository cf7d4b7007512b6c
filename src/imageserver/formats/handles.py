"""Open HDF5 files and parsed file layouts, kept between frames and shared by threads.

Opening an HDF5 file costs far more than reading one chunk, and the legacy server reopened the
master and every data file for each frame (legacy bug P1). A file is identified by its resolved
path, size, modification time and status-change time, taken by a stat on every request: a file
rewritten in place (a new series under the same name) gets a fresh handle and a fresh layout
instead of stale bytes, and a file whose mode, owner or group changed (chmod, chown, chgrp all
change the ctime) is opened again, so the OS checks this process's access again instead of an
open handle serving a user who may no longer read it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

import h5py

DEFAULT_MAX_FILES = 32
DEFAULT_MAX_LAYOUTS = 16
"""Each Eiger layout holds its series' mask: 17 MB for a 16M detector."""

V = TypeVar("V")


class FileKey(NamedTuple):
    """What makes two opens "the same file": path, size, modification and status-change time."""

    path: str
    size_bytes: int
    mtime_ns: int
    ctime_ns: int


def file_key(path: Path | str) -> FileKey:
    """Stat ``path``; raises the OS error (FileNotFoundError, PermissionError) as it comes."""
    resolved = os.path.realpath(path)
    stat = os.stat(resolved)
    return FileKey(resolved, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def open_h5_readonly(path: str) -> h5py.File:
    """Read-only with the library's default locking (``HDF5_USE_FILE_LOCKING`` decides).

    Not ``locking=False``: HDF5 refuses a second open of the same file in the process with
    different locking flags, so any other h5py user here would fail on a cached file.

    A file a detector is still writing in SWMR mode refuses a plain open ("already open for
    write"): it is opened as an SWMR reader, which sees every frame the writer flushed. Its
    size and mtime change with each flush, so the next request opens it afresh.
    """
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if SWMR_WRITING not in str(exc):
            raise
    return h5py.File(path, "r", swmr=True)


SWMR_WRITING = "already open for write"
"""HDF5's complaint about a file whose superblock says a writer has it open (SWMR)."""


@dataclass(eq=False)
class _Handle:
    file: h5py.File
    users: int = 0
    is_evicted: bool = False


class HandleCache:
    """A bounded LRU of open files; a handle evicted while in use closes when its last user ends.

    Use ``with cache.open(path) as f:``; the handle stays valid for the whole block even if
    other threads push it out of the cache meanwhile.
    """

    def __init__(
        self,
        max_files: int = DEFAULT_MAX_FILES,
        opener: Callable[[str], h5py.File] = open_h5_readonly,
    ) -> None:
        if max_files < 1:
            raise ValueError(f"max_files must be at least 1, not {max_files}")
        self.max_files = max_files
        self._opener = opener
        self._lock = threading.Lock()
        self._handles: OrderedDict[FileKey, _Handle] = OrderedDict()
        self._key_by_path: dict[str, FileKey] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)

    @contextmanager
    def open(self, path: Path | str, key: FileKey | None = None) -> Iterator[h5py.File]:
        """The cached handle of ``path`` (opened on a miss); OS and h5py errors pass through."""
        key = key or file_key(path)
        handle = self._acquire(key)
        try:
            yield handle.file
        finally:
            self._release(handle)

    def clear(self) -> None:
        """Forget every handle; each one closes now or when its last user finishes."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
            self._key_by_path.clear()
            to_close = [h for h in handles if self._mark_evicted(h)]
        for handle in to_close:
            handle.file.close()

    def _acquire(self, key: FileKey) -> _Handle:
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
                handle.users += 1
                return handle
            outdated = self._evict_older_version(key)
        # HDF5 matches an open to files it already has open by inode, and a file rewritten in
        # place keeps its inode: a handle on the old contents must close first, or the new
        # open would share its outdated metadata (chunk offsets into the old bytes). One still
        # in use by another thread closes when that read ends; only a read started then sees
        # the old structure (and the chunk checks refuse what does not fit). A file whose
        # access changed is opened afresh the same way, and the OS decides again.
        for stale in outdated:
            stale.file.close()
        # Open outside the lock: a slow open must not stall threads reading cached files.
        opened = _Handle(self._opener(key.path), users=1)
        to_close: list[_Handle] = []
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:  # another thread opened it meanwhile: use theirs
                handle.users += 1
                self._handles.move_to_end(key)
                opened.users = 0
                to_close.append(opened)
            else:
                handle = opened
                to_close.extend(self._insert(key, handle))
        for stale in to_close:
            stale.file.close()
        return handle

    def _evict_older_version(self, key: FileKey) -> list[_Handle]:
        """Drop the handle of an earlier version of ``key``'s file; return it if unused."""
        old_key = self._key_by_path.get(key.path)
        if old_key is None or old_key == key:
            return []
        del self._key_by_path[key.path]
        old = self._handles.pop(old_key)
        return [old] if self._mark_evicted(old) else []

    def _insert(self, key: FileKey, handle: _Handle) -> list[_Handle]:
        """Add ``handle``; return the evicted handles that nobody uses (to close unlocked)."""
        evicted: list[_Handle] = []
        old_key = self._key_by_path.get(key.path)
        if old_key is not None and old_key != key:  # rewritten, or its access changed
            evicted.append(self._handles.pop(old_key))
        self._handles[key] = handle
        self._key_by_path[key.path] = key
        while len(self._handles) > self.max_files:
            old_key, old = self._handles.popitem(last=False)
            del self._key_by_path[old_key.path]
            evicted.append(old)
        return [h for h in evicted if self._mark_evicted(h)]

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            should_close = handle.is_evicted and handle.users == 0
        if should_close:
            handle.file.close()

    @staticmethod
    def _mark_evicted(handle: _Handle) -> bool:
        """Mark as evicted (caller holds the lock); True if it can be closed right away."""
        handle.is_evicted = True
        return handle.users == 0


@dataclass(eq=False)
class _Slot(Generic[V]):
    build_lock: threading.Lock = field(default_factory=threading.Lock)
    value: V | None = None


class LayoutCache(Generic[V]):
    """A bounded LRU of values parsed from a file (frame layout, mask), built once per key.

    Threads asking for the same missing key wait for one build instead of each re-reading a
    16M mask; different keys build in parallel. A rewritten file replaces its old entry.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_LAYOUTS) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._slots: OrderedDict[FileKey, _Slot[V]] = OrderedDict()
        self._key_by_path: dict[str, FileKey] = {}

    def __len__(self) -> int:
        with self._lock:
            return sum(slot.value is not None for slot in self._slots.values())

    def get_or_build(self, key: FileKey, build: Callable[[], V]) -> V:
        """The cached value for ``key``, or ``build()``'s, which is then kept."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                old_key = self._key_by_path.get(key.path)
                if old_key is not None:
                    self._slots.pop(old_key, None)
                slot = self._slots[key] = _Slot()
                self._key_by_path[key.path] = key
            self._slots.move_to_end(key)
            while len(self._slots) > self.max_entries:
                old_key, _ = self._slots.popitem(last=False)
                del self._key_by_path[old_key.path]
        with slot.build_lock:
            if slot.value is None:
                slot.value = build()
            return slot.value

    def discard(self, key: FileKey) -> None:
        """Drop ``key``, e.g. when a data file behind a cached layout has changed."""
        with self._lock:
            if self._slots.pop(key, None) is not None:
                del self._key_by_path[key.path]
