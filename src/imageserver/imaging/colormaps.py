"""Colour maps: a 256-entry RGB ramp plus the colours of overloaded and masked pixels.

The ramp runs from the colour of "at or below the white level" (index 0) to "at or above the
black level" (index 255); the names follow the legacy meaning of white and black levels
(legacy-server.md §5.1). Overload and masked colours are chosen never to occur in the ramp.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imageserver.errors import RequestError

Rgb = tuple[int, int, int]
Lut = npt.NDArray[np.uint8]
Palette = npt.NDArray[np.uint32]

RED: Rgb = (255, 0, 0)
CYAN: Rgb = (0, 255, 255)
BLUE_GREY: Rgb = (110, 125, 150)
MID_GREY: Rgb = (128, 128, 128)
OVERLOAD_INDEX = 257
"""Palette entries: 0..255 the ramp, 256 the masked colour, 257 the overload colour."""


@dataclass(frozen=True, eq=False)
class Colormap:
    """``lut`` is (256, 3) uint8 and read-only; ``overload`` and ``masked`` are RGB triples."""

    name: str
    lut: Lut
    overload: Rgb
    masked: Rgb

    @functools.cached_property
    def rgb_palette(self) -> Palette:
        """The ramp, then the masked and the overload colour (the contrast kernel's indices
        256 and 257), each packed as R | G << 8 | B << 16."""
        return pack_palette(np.concatenate([self.lut, [self.masked, self.overload]]))

    @functools.cached_property
    def ycc_palette(self) -> Palette:
        """The same colours in JFIF YCbCr (what a JPEG stores): grey g is exactly (g, 128, 128)."""
        return pack_palette(rgb_to_ycc(np.concatenate([self.lut, [self.masked, self.overload]])))

    @functools.cached_property
    def overload_chroma(self) -> tuple[int, int]:
        """(Cb, Cr) of the overload colour: what a 4:2:0 JPEG keeps whole (`encode`)."""
        packed = int(self.ycc_palette[OVERLOAD_INDEX])
        return (packed >> 8) & 255, (packed >> 16) & 255


def pack_palette(colours: npt.ArrayLike) -> Palette:
    """(n, 3) colours as n uint32, channel k in bits 8k..8k+7; read-only."""
    channels = np.asarray(colours, dtype=np.uint32)
    packed = (channels[:, 0] | channels[:, 1] << 8 | channels[:, 2] << 16).astype(np.uint32)
    packed.setflags(write=False)
    return packed


def rgb_to_ycc(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """JFIF (ITU-R BT.601 full range) YCbCr of (..., 3) RGB, rounded as libjpeg does."""
    ycc = rgb.astype(np.float64) @ _RGB_TO_YCC.T + np.array([0.0, 128.0, 128.0])
    return np.clip(np.floor(ycc + 0.5), 0, 255).astype(np.uint8)


_RGB_TO_YCC = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168735892, -0.331264108, 0.5],
        [0.5, -0.418687589, -0.081312411],
    ]
)


def ramp_lut(knots: list[Rgb]) -> Lut:
    """A 256-entry ramp through equally spaced colours, linear in RGB between them."""
    positions = np.linspace(0.0, 255.0, len(knots))
    channels = np.array(knots, dtype=np.float64).T
    index = np.arange(256, dtype=np.float64)
    lut = np.stack([np.interp(index, positions, channel) for channel in channels], axis=1)
    lut = np.rint(lut).astype(np.uint8)
    lut.setflags(write=False)
    return lut


VIRIDIS_KNOTS: list[Rgb] = [
    (0x44, 0x01, 0x54), (0x48, 0x28, 0x78), (0x3E, 0x4A, 0x89), (0x31, 0x68, 0x8E),
    (0x26, 0x82, 0x8E), (0x1F, 0x9E, 0x89), (0x35, 0xB7, 0x79), (0x6D, 0xCD, 0x59),
    (0xB4, 0xDE, 0x2C), (0xFD, 0xE7, 0x25),
]  # fmt: skip
"""viridis at 10 equally spaced points (as published by viridisLite); the 254 entries between
them are interpolated, within a few levels of matplotlib's 256-entry table."""

COLORMAPS: dict[str, Colormap] = {
    cmap.name: cmap
    for cmap in (
        # Legacy look: white background, dark spots, red overloads.
        Colormap("grey", ramp_lut([(255, 255, 255), (0, 0, 0)]), RED, BLUE_GREY),
        Colormap("inverse", ramp_lut([(0, 0, 0), (255, 255, 255)]), RED, BLUE_GREY),
        # Red is inside the heat ramp, so overloads are cyan there.
        Colormap(
            "heat",
            ramp_lut([(0, 0, 0), (255, 0, 0), (255, 255, 0), (255, 255, 255)]),
            CYAN,
            BLUE_GREY,
        ),
        # viridis is all blues and greens: masked pixels are neutral grey.
        Colormap("viridis", ramp_lut(VIRIDIS_KNOTS), RED, MID_GREY),
    )
}


def get_colormap(name: str) -> Colormap:
    """The named map; RequestError naming the known ones otherwise."""
    try:
        return COLORMAPS[name]
    except KeyError:
        known = ", ".join(sorted(COLORMAPS))
        raise RequestError(f"unknown colormap {name!r}; known colormaps: {known}") from None
