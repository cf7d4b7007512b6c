"""The meta frame's JSON, made once per view: a series' meta carries per-frame arrays.

An Eiger master's meta holds goniometer arrays with one entry per frame, so its JSON grows
with the series (4 KB for 48 frames, ~100 KB for 1,800) and encoding it takes from 0.2 ms to
several ms: more than the rest of an exact repeat. Views in the worker's cache keep the same
meta object, so its JSON is made once, with a placeholder where each request's own ``fn``
goes (the file name as that client spelled it), and reused.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

FN_PLACEHOLDER = "\x00fn\x00"
_FN_FIELD = b'"fn":' + json.dumps(FN_PLACEHOLDER).encode()
"""The placeholder as the top-level field: inside a JSON string every quote is escaped, so
this byte sequence can only be that field."""


def encode_meta(meta: dict[str, Any]) -> bytes:
    """Compact with sorted keys, as the legacy server (jansson) wrote it; no NaN."""
    return json.dumps(meta, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


class MetaJsonCache:
    """Templates of recently sent metas, by identity of the meta object (which they keep)."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._templates: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, meta: dict[str, Any], fn: str) -> bytes:
        """``meta`` with ``"fn": fn``, as `encode_meta` writes it."""
        with self._lock:
            entry = self._templates.get(id(meta))
            if entry is not None and entry[0] is meta:
                self._templates.move_to_end(id(meta))
                template = entry[1]
            else:
                template = b""
        if not template:
            template = encode_meta({**meta, "fn": FN_PLACEHOLDER})
            with self._lock:
                self._templates[id(meta)] = (meta, template)
                self._templates.move_to_end(id(meta))
                while len(self._templates) > self._capacity:
                    self._templates.popitem(last=False)
        return template.replace(_FN_FIELD, b'"fn":' + json.dumps(fn).encode(), 1)
