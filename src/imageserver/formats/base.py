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
from typing import Any, ClassVar, Protocol, cast

import numpy as np
import numpy.typing as npt

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError, FrameRangeError, FrameTooLargeError
from imageserver.formats.bslz4 import Bslz4Stream

PixelArray = npt.NDArray[np.uint16] | npt.NDArray[np.uint32]
MaskArray = npt.NDArray[np.uint8]

HC_EV_ANGSTROM = 12398.4193
"""h·c in eV·Å: photon energy (eV) = HC_EV_ANGSTROM / wavelength (Å)."""

MAX_SIDE_PX = 1 << 20
"""No detector is a million pixels wide: a longer side is a damaged header, not a big image."""


PANEL_NUMBERS = 12


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
    panel: tuple[float, ...] | None = None
    """Where the detector is when the file says more than the beam centre and distance (a
    full CBF's axis tables, e.g. a detector on a 2θ arm): the corner of pixel (0, 0) in mm,
    the unit vectors of growing fast and slow pixel index and the beam's direction, 12
    numbers in one laboratory frame (`formats.imgcif_axes`). None: a flat detector normal to
    the beam at the beam centre."""

    def __post_init__(self) -> None:
        if self.panel is not None:
            panel = tuple(float(value) for value in self.panel)
            if len(panel) != PANEL_NUMBERS:
                raise ValueError(f"a detector panel is {PANEL_NUMBERS} numbers, not {len(panel)}")
            object.__setattr__(self, "panel", panel)

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


STRIP_ELEMENTS = 1 << 18
"""Pixels decoded at a time when a compressed frame is read in strips: 1 MB of uint32, which
stays in the processor's cache while it is folded into a view or copied out."""


@dataclass(frozen=True, eq=False)  # holds a buffer: compared by identity
class EncodedFrame:
    """A frame kept as its compressed stream, decoded a strip of rows at a time.

    For an Eiger bitshuffle-LZ4 chunk (one frame per chunk, unsigned native pixels): 8–12
    MB held instead of 72 MB decoded, and a view or tile decodes only the rows it shows, into
    small buffers reused from the heap rather than a fresh 72 MB array whose every page the
    kernel must supply (`imaging.reduce`). Same ``mask``, ``meta``, ``number`` and ``path``
    as a `Frame`; `decode` gives one.
    """

    stream: Bslz4Stream
    mask: MaskArray | None
    meta: FrameMeta
    number: int
    path: Path
    origin: str = ""
    """Where the stream was read from (a data file's chunk), for error messages."""

    @property
    def dtype(self) -> np.dtype:
        return self.stream.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return self.meta.height_px, self.meta.width_px

    @property
    def nbytes(self) -> int:
        return self.stream.nbytes

    def rows(self, first: int, stop: int) -> PixelArray:
        """Rows [first, stop) as a C-contiguous (stop − first, width) array."""
        width = self.meta.width_px
        try:
            pixels = self.stream.decode(first * width, stop * width)
        except ValueError as exc:
            raise self._corrupt(exc) from None
        return cast(PixelArray, pixels.reshape(-1, width))

    def decode(self) -> Frame:
        """The whole frame, decoded in pieces over the process's threads."""
        try:
            pixels = self.stream.decode_all().reshape(self.shape)
        except ValueError as exc:
            raise self._corrupt(exc) from None
        return Frame(
            pixels=pixels, mask=self.mask, meta=self.meta, number=self.number, path=self.path
        )

    def _corrupt(self, exc: ValueError) -> CorruptFrameError:
        """bitshuffle's complaint about a block, said of where the stream came from."""
        return CorruptFrameError(f"{self.origin or f'{self.path} frame {self.number}'} is {exc}")


AnyFrame = Frame | EncodedFrame
"""What the imaging code reduces: a decoded frame, or one decoded strip by strip."""


class Reader(Protocol):
    """A detector format. ``sniff`` decides from the first bytes only and never raises.

    At most one reader in ``formats.READERS`` may claim a given file. ``limits`` bound what a
    file may make the reader hold (decompressed bytes, frame pixels); a reader checks them
    before it allocates.
    """

    format_name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]

    @classmethod
    def sniff(cls, head: bytes, suffix: str) -> bool: ...

    def read_meta(self, path: Path, *, limits: LimitSettings = DEFAULT_LIMITS) -> FrameMeta: ...

    def read_frame(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> Frame: ...

    def frame_files(
        self, path: Path, number: int, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> tuple[str, ...]:
        """Files other than ``path`` that frame ``number``'s pixels come from (an Eiger
        master's data file), so cache keys can include them; () for one-file formats."""
        ...


def frame_range_error(
    path_or_fn: Path | str, number: int, first: int, last: int
) -> FrameRangeError:
    """The one wording of a frame number outside a file's frames, for readers and service."""
    return FrameRangeError(
        f"{path_or_fn}: frame {number} is outside the file's frames {first}–{last}"
    )


def check_frame_size(
    path: Path | str, width_px: int, height_px: int, limits: LimitSettings
) -> None:
    """Refuse the size a header declares before anything is allocated for it.

    A side that is not positive or longer than MAX_SIDE_PX is a damaged header
    (CorruptFrameError); a plausible size beyond ``limits.max_frame_pixels`` is
    FrameTooLargeError.
    """
    if not (0 < width_px <= MAX_SIDE_PX and 0 < height_px <= MAX_SIDE_PX):
        raise CorruptFrameError(
            f"{path}: the header declares an impossible frame size of "
            f"{width_px} x {height_px} pixels"
        )
    if width_px * height_px > limits.max_frame_pixels:
        raise FrameTooLargeError(
            f"{path}: the frame is {width_px} x {height_px} = {width_px * height_px} pixels, "
            f"more than the limit of {limits.max_frame_pixels} (limits.max_frame_pixels)"
        )
