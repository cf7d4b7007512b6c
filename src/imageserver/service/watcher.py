"""DirectoryWatcher: inotify watches on the few directories a worker's users follow.

One inotify descriptor per worker and one thread reading it. A watch is added by the job
thread whose request named the directory (the worker already runs as the user, so the OS
decides whether it may), at most ``max_dirs`` of them: the least recently asked goes first,
and one no request named for ``idle_s`` is dropped. The thread hands each batch of events to
a callback as `DirectoryEvent`s, one per (directory, name), their masks merged: a detector's
hundred writes to one file between two reads are one event.

A directory deleted, moved, unmounted or whose own attributes change (a chmod may take the
user's access away) ends its watch: the callback hears `Change.GONE`, and the next request
scans the directory again as the user.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from inotify_simple import INotify
from inotify_simple import flags as Flag  # noqa: N812  (an enum of flags)

log = logging.getLogger(__name__)

WATCHED = (
    Flag.CLOSE_WRITE
    | Flag.MOVED_TO
    | Flag.MOVED_FROM
    | Flag.DELETE
    | Flag.MODIFY
    | Flag.ATTRIB
    | Flag.DELETE_SELF
    | Flag.MOVE_SELF
    | Flag.ONLYDIR
)
ENDS_WATCH = Flag.DELETE_SELF | Flag.MOVE_SELF | Flag.UNMOUNT | Flag.IGNORED
READ_TIMEOUT_MS = 1000
"""How often the thread looks for idle watches when no event comes."""


class Change(enum.Enum):
    WRITTEN = "written"
    """A file was closed after writing, or moved in: complete."""
    GROWING = "growing"
    """A file was written to and is still open (an Eiger data file a detector appends to)."""
    REMOVED = "removed"
    """A file was deleted or moved out."""
    ATTRIBUTES = "attributes"
    """A file's mode or owner changed."""
    GONE = "gone"
    """The watch ended: the directory went away or its own attributes changed."""
    OVERFLOW = "overflow"
    """The kernel's queue overflowed: events were lost, the directory must be read again."""


@dataclass(frozen=True)
class DirectoryEvent:
    directory: str
    name: str
    """The file's name in ``directory``; "" for the directory itself."""
    change: Change


OnEvents = Callable[[list[DirectoryEvent]], None]


def change_of(mask: int) -> Change | None:
    """What a merged event mask says happened to a file, the most telling first."""
    if mask & (Flag.DELETE | Flag.MOVED_FROM):
        return Change.REMOVED
    if mask & (Flag.CLOSE_WRITE | Flag.MOVED_TO):
        return Change.WRITTEN
    if mask & Flag.MODIFY:
        return Change.GROWING
    if mask & Flag.ATTRIB:
        return Change.ATTRIBUTES
    return None


class DirectoryWatcher:
    """Bounded, expiring inotify watches and the thread that reads their events."""

    def __init__(
        self,
        on_events: OnEvents,
        *,
        max_dirs: int = 8,
        idle_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_dirs = max_dirs
        self.idle_s = idle_s
        self._on_events = on_events
        self._clock = clock
        self._inotify = INotify()
        self._lock = threading.Lock()
        self._by_dir: OrderedDict[str, tuple[int, float]] = OrderedDict()
        """Directory → (watch descriptor, last asked), least recently asked first."""
        self._by_wd: dict[int, str] = {}
        self._thread = threading.Thread(target=self._run, name="live-watch", daemon=True)
        self._thread.start()

    def watch(self, directory: str) -> bool:
        """Watch ``directory`` (absolute), or note that it was asked again; False when it
        cannot be watched (missing, not a directory, no access, no watches left)."""
        now = self._clock()
        with self._lock:
            known = self._by_dir.get(directory)
            if known is not None:
                self._by_dir[directory] = (known[0], now)
                self._by_dir.move_to_end(directory)
                return True
        try:
            wd = self._inotify.add_watch(directory, WATCHED)
        except OSError as exc:
            log.debug("live: cannot watch %s: %s", directory, exc.strerror)
            return False
        ended: list[str] = []
        with self._lock:
            previous = self._by_wd.get(wd)
            if previous is not None and previous != directory:  # the same inode, another path
                self._by_dir.pop(previous, None)
                ended.append(previous)
            self._by_wd[wd] = directory
            self._by_dir[directory] = (wd, now)
            self._by_dir.move_to_end(directory)
            while len(self._by_dir) > self.max_dirs:
                oldest, (old_wd, _) = self._by_dir.popitem(last=False)
                self._forget(old_wd)
                ended.append(oldest)
        self._announce_gone(ended)
        return True

    def is_watched(self, directory: str) -> bool:
        with self._lock:
            return directory in self._by_dir

    def watched(self) -> list[str]:
        """The watched directories, least recently asked first."""
        with self._lock:
            return list(self._by_dir)

    def unwatch(self, directory: str) -> None:
        with self._lock:
            known = self._by_dir.pop(directory, None)
            if known is not None:
                self._forget(known[0])
        if known is not None:
            self._announce_gone([directory])

    def close(self) -> None:
        """Stop watching (the thread ends at its next read)."""
        with self._lock:
            self._by_dir.clear()
            self._by_wd.clear()
        self._inotify.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                raw = self._inotify.read(timeout=READ_TIMEOUT_MS)
            except (OSError, ValueError):  # closed
                return
            try:
                self._dispatch(raw)
                self._expire()
            except Exception:  # a bug here must not end live data for the worker's life
                log.exception("live: handling directory events failed")

    def _dispatch(self, raw: list) -> None:
        merged: dict[tuple[str, str], int] = {}
        ended: list[str] = []
        overflowed = False
        with self._lock:
            for event in raw:
                if event.mask & Flag.Q_OVERFLOW:
                    overflowed = True
                    continue
                directory = self._by_wd.get(event.wd)
                if directory is None:
                    continue
                is_self = not event.name
                if event.mask & ENDS_WATCH or (is_self and event.mask & Flag.ATTRIB):
                    self._by_dir.pop(directory, None)
                    self._forget(event.wd, is_removed=bool(event.mask & Flag.IGNORED))
                    ended.append(directory)
                    continue
                if event.mask & Flag.ISDIR or is_self:
                    continue
                key = (directory, event.name)
                merged[key] = merged.get(key, 0) | event.mask
            overflow_dirs = list(self._by_dir) if overflowed else []
        events = [
            DirectoryEvent(directory, name, change)
            for (directory, name), mask in merged.items()
            if directory not in ended and (change := change_of(mask)) is not None
        ]
        events += [DirectoryEvent(directory, "", Change.OVERFLOW) for directory in overflow_dirs]
        events += [DirectoryEvent(directory, "", Change.GONE) for directory in set(ended)]
        if events:
            self._on_events(events)

    def _expire(self) -> None:
        cutoff = self._clock() - self.idle_s
        ended = []
        with self._lock:
            for directory, (wd, asked) in list(self._by_dir.items()):
                if asked < cutoff:
                    del self._by_dir[directory]
                    self._forget(wd)
                    ended.append(directory)
        self._announce_gone(ended)

    def _forget(self, wd: int, *, is_removed: bool = False) -> None:
        """Drop a watch descriptor (caller holds the lock); the kernel's too unless it
        already removed it."""
        self._by_wd.pop(wd, None)
        if is_removed:
            return
        with contextlib.suppress(OSError):  # the kernel ended it first (directory gone)
            self._inotify.rm_watch(wd)

    def _announce_gone(self, directories: list[str]) -> None:
        if directories:
            self._on_events([DirectoryEvent(d, "", Change.GONE) for d in directories])
