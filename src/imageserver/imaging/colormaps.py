"""Colour maps: a 256-entry RGB ramp plus the colours of overloaded and masked pixels.

The ramp runs from the colour of "at or below the white level" (index 0) to "at or above the
black level" (index 255); the names follow the legacy meaning of white and black levels
(legacy-server.md §5.1). Overload and masked colours are chosen never to occur in the ramp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imageserver.errors import RequestError

Rgb = tuple[int, int, int]
Lut = npt.NDArray[np.uint8]

RED: Rgb = (255, 0, 0)
CYAN: Rgb = (0, 255, 255)
BLUE_GREY: Rgb = (110, 125, 150)
MID_GREY: Rgb = (128, 128, 128)


@dataclass(frozen=True, eq=False)
class Colormap:
    """``lut`` is (256, 3) uint8 and read-only; ``overload`` and ``masked`` are RGB triples."""

    name: str
    lut: Lut
    overload: Rgb
    masked: Rgb


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
