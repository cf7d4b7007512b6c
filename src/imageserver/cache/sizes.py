"""What a cached value really holds, in bytes: the budget is only as good as these numbers.

An array is charged for the buffer that owns its memory, not for its own extent: a view
(a row of a chunk, a reinterpretation, ``frombuffer`` of a file's bytes) keeps its whole base
alive. Python objects (meta dicts, statistics, encoded bytes) are charged by walking them
with ``sys.getsizeof``, each object once per value, arrays inside them by their buffers.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping

import numpy as np

MAX_OBJECTS = 100_000
"""A walk stops after this many objects (a runaway structure) and charges what it found."""
_SCALARS = frozenset({str, bytes, int, float, complex, bool, type(None)})


def array_nbytes(array: np.ndarray) -> int:
    """Bytes of the buffer that keeps ``array`` alive (its own data for an owning array)."""
    return _buffer_nbytes(_owner(array), array)


def object_nbytes(value: object) -> int:
    """Bytes held by ``value`` and everything it refers to (arrays by their owning buffer).

    Containers and arrays are counted once; scalars (numbers, strings) every time they are
    referred to, which overstates interned ones a little and keeps the walk fast. String keys
    of dicts are field names, shared by every dict of their kind: only their slots count.
    """
    seen: set[int] = set()
    stack = [value]
    total = 0
    while stack and len(seen) < MAX_OBJECTS:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            total += sys.getsizeof(item)
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            total += sys.getsizeof(item)
            stack.extend(key for key in item if type(key) is not str)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            total += sys.getsizeof(item)
            stack.extend(item)
        elif isinstance(item, np.ndarray):
            total += sys.getsizeof(item) if item.flags.owndata else _ARRAY_HEADER_BYTES
            owner = _owner(item)
            if owner is not item and id(owner) not in seen:
                seen.add(id(owner))
                total += _buffer_nbytes(owner, item)
        else:
            total += sys.getsizeof(item)
            names = _field_names(kind)
            if names:
                stack.extend(getattr(item, name) for name in names)
                if hasattr(item, "__dict__"):
                    total += sys.getsizeof(item.__dict__)
            elif isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, (set, frozenset)):
                stack.extend(item)
    return total


def _field_names(kind: type) -> tuple[str, ...]:
    """A dataclass's field names; () for any other class (whose contents are not walked)."""
    names = _FIELDS.get(kind)
    if names is None:
        is_dataclass = dataclasses.is_dataclass(kind)
        names = tuple(f.name for f in dataclasses.fields(kind)) if is_dataclass else ()
        _FIELDS[kind] = names
    return names


_FIELDS: dict[type, tuple[str, ...]] = {}


_ARRAY_HEADER_BYTES = sys.getsizeof(np.empty(0)[:0])
"""An ndarray object that owns no data: shape, strides, a reference to its base."""


def _owner(array: np.ndarray) -> object:
    """The object at the end of ``array``'s chain of bases: an owning array, or a buffer."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, memoryview) and owner.obj is not None:
        owner = owner.obj
    return owner


def _buffer_nbytes(owner: object, array: np.ndarray) -> int:
    if isinstance(owner, np.ndarray):
        return int(owner.nbytes)
    try:
        return memoryview(owner).nbytes  # type: ignore[arg-type]
    except TypeError:  # an exotic exporter: at least the array's own extent
        return int(array.nbytes)
