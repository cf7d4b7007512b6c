"""Frame and FrameMeta, the one shape every reader returns, and the Reader protocol.

Units of the metadata model (the legacy wire names carry the same units, see `legacy_meta`):
pixel counts and beam centre in detector pixels (x = fast axis, columns; y = slow axis, rows,
from the top-left pixel centre at 0), distances and pixel sizes in metres, wavelength in
ångström, photon energy in eV, times in seconds, angles in degrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from imageserver.errors import FrameRangeError

PixelArray = npt.NDArray[np.uint16] | npt.NDArray[np.uint32]
MaskArray = npt.NDArray[np.uint8]

HC_EV_ANGSTROM = 12398.4193
"""h·c in eV·Å: photon energy (eV) = HC_EV_ANGSTROM / wavelength (Å)."""


@dataclass(frozen=True)
class FrameMeta:
    """What a file says about its detector and frames, in one model for all formats.

    ``native`` keeps the format's own fields under the legacy wire names (Dectris dataset
    names for Eiger, the camelCase Rayonix names for MAR CCD, ...) so old clients keep
    finding them; the typed fields above it are what the imaging code uses.
    """

    format_name: str
    width_px: int
    height_px: int
    bit_depth: int
    first_frame: int = 1
    last_frame: int = 1
    beam_center_x_px: float | None = None
    beam_center_y_px: float | None = None
    distance_m: float | None = None
    wavelength_a: float | None = None
    pixel_size_x_m: float | None = None
    pixel_size_y_m: float | None = None
    saturation_value: int | None = None
    native: Mapping[str, Any] = field(default_factory=dict)

    @property
    def frame_count(self) -> int:
        return self.last_frame - self.first_frame + 1

    @property
    def photon_energy_ev(self) -> float | None:
        if not self.wavelength_a:
            return None
        return HC_EV_ANGSTROM / self.wavelength_a


@dataclass(frozen=True)
class Frame:
    """One detector frame: pixels at full depth, the static bad-pixel mask, and metadata.

    ``pixels`` is C-contiguous uint16 or uint32 of shape (height, width). A pixel at the
    dtype's maximum is a gap or bad-pixel marker and counts as masked, as does any pixel
    where ``mask`` is non-zero. Signed formats (CBF) are stored as uint32 with negative
    values mapped to the marker. ``mask`` may be None when the file has no mask; it may be
    shared between frames and must never be written to.
    """

    pixels: PixelArray
    mask: MaskArray | None
    meta: FrameMeta
    number: int
    path: Path


class Reader(Protocol):
    """A detector format. ``sniff`` decides from the first bytes only and never raises.

    At most one reader in ``formats.READERS`` may claim a given file.
    """

    format_name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]

    @classmethod
    def sniff(cls, head: bytes, suffix: str) -> bool: ...

    def read_meta(self, path: Path) -> FrameMeta: ...

    def read_frame(self, path: Path, number: int) -> Frame: ...

    def frame_files(self, path: Path, number: int) -> tuple[str, ...]:
        """Files other than ``path`` that frame ``number``'s pixels come from (an Eiger
        master's data file), so cache keys can include them; () for one-file formats."""
        ...


def frame_range_error(path: str | Path, number: int, first: int, last: int) -> FrameRangeError:
    """The one wording of an out-of-range frame, for every reader and request type."""
    return FrameRangeError(f"{path}: frame {number} is outside the file's frames {first}–{last}")
