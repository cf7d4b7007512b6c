"""The one function that builds cache keys, and the file identity every key starts from.

A key names the ESAF group whose workers may share the entry, the file (canonical path,
size, modification and change times: a file rewritten in place gets new keys, so it is never
served stale), the frame with the identities of any other files its pixels come from (an
Eiger master's data file, which can be rewritten while the master stays as it was), the
*planned* view (after `plan_view`'s rounding, so zoom 2.04 and 2.0 share an entry) and, for
encoded images, the whole look. Paths inside the worker's ESAF directory are written relative
to it (``~<owner uid>/rel/path``), so nodes that mount the ESAF's data at different places
still share entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from imageserver.imaging.geometry import View
from imageserver.render import Look

KINDS = ("dims", "frame", "view", "image")
"""What a key names: a file's frame size, a decoded frame, a reduced view, an encoded image."""


@dataclass(frozen=True)
class Scope:
    """Whose entries: the worker's ESAF group and its working (ESAF) directory.

    ``home_tag`` names the directory independently of where a node mounts it: the uid that
    owns it. Empty when the directory cannot be examined; paths are then kept absolute.
    """

    gid: int
    home: str
    home_tag: str

    @classmethod
    def for_worker(cls, gid: int, home: str) -> Scope:
        resolved = os.path.realpath(home)
        try:
            tag = str(os.stat(resolved).st_uid)
        except OSError:
            tag = ""
        return cls(gid=gid, home=resolved, home_tag=tag)


@dataclass(frozen=True)
class FileIdentity:
    """What makes two reads "the same file": canonical path, size, mtime and ctime.

    ctime is included because a user can set mtime back (``touch -d``) but not ctime.
    """

    path: str
    size_bytes: int
    mtime_ns: int
    ctime_ns: int


def file_identity(path: Path | str, scope: Scope) -> FileIdentity | None:
    """The identity of a regular file this process may read, else None.

    None sends the request down the uncached path, where the reader raises the typed error
    (missing, permission denied, not a regular file). Checking readability here means a
    cached entry is never served to a worker the file system would refuse.
    """
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
        is_readable = os.access(real, os.R_OK, effective_ids=os.access in os.supports_effective_ids)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    if not stat.S_ISREG(info.st_mode) or not is_readable:
        return None
    return FileIdentity(
        path=canonical_path(real, scope),
        size_bytes=info.st_size,
        mtime_ns=info.st_mtime_ns,
        ctime_ns=info.st_ctime_ns,
    )


def canonical_path(real: str, scope: Scope) -> str:
    """``~<owner uid>/relative`` inside the scope's directory, else the resolved absolute path."""
    if scope.home_tag and real.startswith(scope.home.rstrip("/") + "/"):
        return f"~{scope.home_tag}/{real[len(scope.home.rstrip('/')) + 1 :]}"
    return real


@dataclass(frozen=True)
class CacheKey:
    """A cache key: the ESAF group, what kind of value, and the canonical text of the rest."""

    gid: int
    kind: str
    text: str

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogateescape")).hexdigest()[:40]

    def redis_name(self, prefix: str) -> str:
        """``<prefix>:<gid>:<kind>:<digest>``; Redis ACLs confine a worker to its gid's names."""
        return f"{prefix}:{self.gid}:{self.kind}:{self.digest}"


def cache_key(
    scope: Scope,
    file: FileIdentity,
    *,
    frame: int | None = None,
    frame_files: tuple[FileIdentity, ...] = (),
    view: View | None = None,
    look: Look | None = None,
    analysis: object | None = None,
) -> CacheKey:
    """The key of a file's dims, a frame, a reduced view, an encoded image, or a frame's
    analysis (``analysis``: its parameters, a dataclass; most given wins).

    A view key needs its frame, an image key its frame and view; each kind's text holds
    everything of the kinds before it. ``frame_files`` are the frame's other source files.
    """
    parts: dict[str, object] = {"file": _values(file)}
    kind = "dims"
    if frame is not None:
        parts["frame"] = int(frame)
        if frame_files:
            parts["frame_files"] = [_values(other) for other in frame_files]
        kind = "frame"
    if view is not None:
        parts["view"] = _values(view)
        kind = "view"
    if look is not None:
        parts["look"] = _values(look)
        kind = "image"
    if analysis is not None:
        parts["analysis"] = _values(analysis)
        kind = "analysis"
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CacheKey(gid=scope.gid, kind=kind, text=text)


def _values(record: Any) -> tuple[object, ...]:
    """A flat dataclass's field values, as ``dataclasses.astuple`` gives them without its
    deep copy (which cost ~1 ms per request across a request's few keys)."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:
        names = _FIELD_NAMES[type(record)] = tuple(f.name for f in dataclasses.fields(record))
    return tuple(getattr(record, name) for name in names)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
