"""Which frames are a viewed frame's neighbours: the ones a user looks at next.

Frame N of an Eiger series (or any file of many frames) has N+1 and N−1 in the same file; a
numbered single-frame file (``x_00042.cbf``) has the files numbered one more and one less,
with as many digits. The series key groups the views of one series, so the neighbours of a
place the user left can be dropped when the user views another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imageserver.formats.datasets import dataset_group


@dataclass(frozen=True)
class Neighbours:
    series: tuple[str, ...]
    """The same for every frame of one series."""
    frames: tuple[tuple[str, int], ...]
    """(file, frame) to prepare, the next one first."""


def neighbours(fn: str, frame: int) -> Neighbours:
    """The frames after and before ``frame`` of ``fn`` (absolute), the next one first."""
    directory, name = os.path.split(fn)
    group = dataset_group(name)
    if group is not None and group[0] == "run":
        _, prefix, width, suffix = group
        number = int(name[len(prefix) : len(name) - len(suffix)])
        frames = tuple(
            (os.path.join(directory, f"{prefix}{other:0{width}d}{suffix}"), 1)
            for other in (number + 1, number - 1)
            if other >= 0 and len(f"{other:0{width}d}") == int(width)
        )
        return Neighbours((directory, *group), frames)
    frames = tuple((fn, other) for other in (frame + 1, frame - 1) if other >= 1)
    return Neighbours(("file", fn), frames)
