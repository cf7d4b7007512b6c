"""The detector's position from a full CBF's imgCIF axis tables (a detector on a 2θ arm).

A full CBF describes the detector as a chain of axes (``_axis``: a rotation or translation
along a vector, at an offset, depending on the next axis), each at this frame's setting
(``_diffrn_scan_frame_axis``), ending in the two axes along which the pixel array is laid
out (``_array_structure_list``). The Pilatus header lines (``Beam_xy``, ``Detector_distance``)
describe only a detector normal to the beam; on a 2θ arm the chain is the truth, and it is
what DIALS reads. The result is the flat panel DIALS builds from it: the position of the
corner of pixel (0, 0) (mm), the unit vectors along which fast and slow pixel indices grow,
and the beam's direction, in the imgCIF laboratory frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]
MAX_CHAIN = 32
"""Axes deeper than this (or a cycle) mean a damaged table, not a detector."""


@dataclass(frozen=True)
class _Axis:
    kind: str
    depends_on: str
    vector: tuple[float, float, float]
    offset: tuple[float, float, float]


def detector_panel(rows: Iterable[Mapping[str, str]]) -> tuple[float, ...] | None:
    """Origin (3, mm), fast and slow directions (3 + 3) and beam direction (3), or None
    when the tables are missing, incomplete or inconsistent (the header's model is then
    all there is)."""
    table = _Tables(rows)
    try:
        return table.panel()
    except (KeyError, ValueError, ZeroDivisionError):
        return None


class _Tables:
    def __init__(self, rows: Iterable[Mapping[str, str]]) -> None:
        self.axes: dict[str, _Axis] = {}
        self.settings: dict[str, tuple[float, float]] = {}
        """axis → (angle, displacement) at this frame; ``start_settings`` at the scan's start."""
        self.start_settings: dict[str, tuple[float, float]] = {}
        self.arrays: list[tuple[int, str, str]] = []
        """(precedence, axis set, direction) of each array dimension."""
        self.axis_sets: dict[str, tuple[str, float]] = {}
        """axis set → (its axis, the displacement of the first pixel)."""
        for row in rows:
            self._take(row)

    def _take(self, row: Mapping[str, str]) -> None:
        if "_axis.id" in row:
            self.axes[row["_axis.id"]] = _Axis(
                kind=row.get("_axis.type", "").lower(),
                depends_on=row.get("_axis.depends_on", "."),
                vector=_vector(row, "_axis.vector"),
                offset=_vector(row, "_axis.offset"),
            )
        elif "_diffrn_scan_frame_axis.axis_id" in row:
            self.settings[row["_diffrn_scan_frame_axis.axis_id"]] = _setting(
                row, "_diffrn_scan_frame_axis.angle", "_diffrn_scan_frame_axis.displacement"
            )
        elif "_diffrn_scan_axis.axis_id" in row:
            self.start_settings[row["_diffrn_scan_axis.axis_id"]] = _setting(
                row, "_diffrn_scan_axis.angle_start", "_diffrn_scan_axis.displacement_start"
            )
        elif "_array_structure_list.axis_set_id" in row:
            self.arrays.append(
                (
                    int(row.get("_array_structure_list.precedence", "0")),
                    row["_array_structure_list.axis_set_id"],
                    row.get("_array_structure_list.direction", "increasing").lower(),
                )
            )
        elif "_array_structure_list_axis.axis_set_id" in row:
            displacement = _number(row.get("_array_structure_list_axis.displacement", "."))
            self.axis_sets[row["_array_structure_list_axis.axis_set_id"]] = (
                row["_array_structure_list_axis.axis_id"],
                displacement or 0.0,
            )

    def panel(self) -> tuple[float, ...] | None:
        dimensions = sorted(self.arrays)
        if len(dimensions) != 2 or not self.axes:
            return None
        (_, fast_set, fast_way), (_, slow_set, slow_way) = dimensions
        fast_axis, fast_start = self.axis_sets[fast_set]
        slow_axis, slow_start = self.axis_sets[slow_set]
        at_first_pixel = {fast_axis: fast_start, slow_axis: slow_start}
        placed = self._placement(slow_axis, at_first_pixel)
        origin = placed[:3, 3]
        fast = self._direction(fast_axis, at_first_pixel) * _sign(fast_way)
        slow = self._direction(slow_axis, at_first_pixel) * _sign(slow_way)
        source = self.axes.get("SOURCE")
        beam = -_unit(np.array(source.vector)) if source is not None else np.array([0, 0, -1.0])
        if abs(float(np.dot(fast, slow))) > 1e-6:
            return None  # not a rectangular pixel array
        normal = np.cross(fast, slow)
        if abs(float(np.dot(normal, origin))) < 1e-9:
            return None  # the detector plane passes through the sample
        return tuple(float(v) for v in (*origin, *fast, *slow, *beam))

    def _direction(self, axis_id: str, overrides: Mapping[str, float]) -> Matrix:
        """The axis's vector as the axes it depends on turn it."""
        axis = self.axes[axis_id]
        parent = (
            self._placement(axis.depends_on, overrides)
            if axis.depends_on not in (".", "?", "")
            else np.eye(4)
        )
        return _unit(parent[:3, :3] @ _unit(np.array(axis.vector)))

    def _placement(self, axis_id: str, overrides: Mapping[str, float]) -> Matrix:
        """The 4 × 4 transformation of the chain ending at ``axis_id``, at this frame."""
        chain: list[str] = []
        current = axis_id
        while current not in (".", "?", ""):
            if current in chain or len(chain) >= MAX_CHAIN:
                raise ValueError("the axis chain loops or is too deep")
            chain.append(current)
            current = self.axes[current].depends_on
        matrix = np.eye(4)
        for name in reversed(chain):  # the root first: each axis moves what depends on it
            axis = self.axes[name]
            if name in overrides:
                setting = overrides[name]
            else:
                angle, displacement = self.settings.get(
                    name, self.start_settings.get(name, (0.0, 0.0))
                )
                setting = angle if axis.kind == "rotation" else displacement
            matrix = matrix @ _own(axis, setting)
        return matrix


def _own(axis: _Axis, setting: float) -> Matrix:
    """One axis's transformation: its offset, then its rotation or translation."""
    own = np.eye(4)
    own[:3, 3] = axis.offset
    vector = _unit(np.array(axis.vector))
    motion = np.eye(4)
    if axis.kind == "rotation":
        motion[:3, :3] = _rotation(vector, math.radians(setting))
    elif axis.kind == "translation":
        motion[:3, 3] = vector * setting
    else:
        raise ValueError(f"axis type {axis.kind!r} cannot place a detector")
    return own @ motion


def _rotation(axis: Matrix, angle: float) -> Matrix:
    """Right-handed rotation by ``angle`` about the unit vector ``axis`` (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _unit(vector: Matrix) -> Matrix:
    norm = float(np.linalg.norm(vector))
    if not norm or not math.isfinite(norm):
        raise ValueError("a zero or non-finite axis vector")
    return vector / norm


def _sign(direction: str) -> float:
    return -1.0 if direction == "decreasing" else 1.0


def _vector(row: Mapping[str, str], name: str) -> tuple[float, float, float]:
    x, y, z = (_number(row.get(f"{name}[{i}]", ".")) or 0.0 for i in (1, 2, 3))
    return (x, y, z)


def _setting(row: Mapping[str, str], angle: str, displacement: str) -> tuple[float, float]:
    """The row's angle (for a rotation) and displacement (for a translation)."""
    return (_number(row.get(angle, ".")) or 0.0, _number(row.get(displacement, ".")) or 0.0)


def _number(text: str) -> float | None:
    try:
        value = float(text.split("(", 1)[0])
    except ValueError:
        return None
    return value if math.isfinite(value) else None
