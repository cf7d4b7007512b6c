"""WatchedListing: a watched directory's datasets kept up to date from its events.

`latest` on a watched directory answers from here instead of scanning it: the directory is
read once (`seed`), then each event re-reads only the file it names (`update`), and only the
datasets whose files changed are grouped again (`formats.datasets.group_datasets`, the same
code a scan runs), when a request asks. Events that arrive while the seed's scan runs are
applied after it. A listing longer than ``limits.max_list_entries`` is not kept: a scan
decides what such a directory shows.
"""

from __future__ import annotations

import os
import stat
import threading

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.formats.datasets import (
    Dataset,
    dataset_group,
    group_datasets,
    newest_dataset,
    read_entries,
)

Group = tuple[str, ...]


class WatchedListing:
    """One directory's frame files by dataset, and the datasets they make."""

    def __init__(self, directory: str, limits: LimitSettings = DEFAULT_LIMITS) -> None:
        self.directory = directory
        self.limits = limits
        self._lock = threading.Lock()
        self._files: dict[Group, dict[str, os.stat_result]] = {}
        self._datasets: dict[Group, list[Dataset]] = {}
        self._dirty: set[Group] = set()
        self._versions: dict[Group, int] = {}
        self._changed_while_seeding: set[str] | None = None
        self._count = 0
        self.is_seeded = False

    def seed(self) -> None:
        """Read the directory (as the worker's identity); FileMissingError / FileAccessError
        as a scan would raise them."""
        with self._lock:
            self._changed_while_seeding = set()
        try:
            files, _dirs, truncated = read_entries(self.directory, self.limits.max_list_entries)
        except BaseException:
            with self._lock:
                self._changed_while_seeding = None
            raise
        with self._lock:
            changed = self._changed_while_seeding or set()
            self._changed_while_seeding = None
            self._files = {}
            for name, info in files.items():
                group = dataset_group(name)
                if group is not None:
                    self._files.setdefault(group, {})[name] = info
            self._count = sum(len(members) for members in self._files.values())
            self._dirty = set(self._files)
            self._datasets = {}
            self.is_seeded = not truncated
        for name in changed:
            self.update(name)

    def update(self, name: str) -> Group | None:
        """Re-read one file's status after an event named it; the group it belongs to."""
        group = dataset_group(name)
        if group is None:
            return None
        with self._lock:
            if self._changed_while_seeding is not None:
                self._changed_while_seeding.add(name)
        try:
            info: os.stat_result | None = os.stat(os.path.join(self.directory, name))
        except OSError:  # removed, or a link to nothing: the scan leaves it out too
            info = None
        if info is not None and not stat.S_ISREG(info.st_mode):
            info = None
        with self._lock:
            members = self._files.setdefault(group, {})
            had = name in members
            if info is None:
                members.pop(name, None)
                if not members:
                    del self._files[group]
            else:
                members[name] = info
            self._count += (info is not None) - had
            if self._count > self.limits.max_list_entries:
                self.is_seeded = False  # a scan is cut short here; let it decide
            self._dirty.add(group)
            self._versions[group] = self._versions.get(group, 0) + 1
        return group

    def latest(self) -> tuple[Dataset | None, int | None]:
        """The dataset written last and its newest frame, as `latest_dataset` would find."""
        self._regroup()
        with self._lock:
            return newest_dataset(d for group in self._datasets.values() for d in group)

    def _regroup(self) -> None:
        """Group again the files of the datasets that changed, outside the lock: an Eiger
        master's metadata is read, which must not hold up the event thread."""
        with self._lock:
            dirty = {
                group: (dict(self._files.get(group, {})), self._versions.get(group, 0))
                for group in self._dirty
            }
        for group, (members, version) in dirty.items():
            datasets = group_datasets(self.directory, members, self.limits) if members else []
            with self._lock:
                if self._versions.get(group, 0) != version:
                    continue  # changed again meanwhile: stays dirty for the next request
                self._dirty.discard(group)
                if datasets:
                    self._datasets[group] = datasets
                else:
                    self._datasets.pop(group, None)
