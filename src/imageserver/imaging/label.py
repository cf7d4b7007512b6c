"""The label banner: a white strip of exactly ``height_px`` rows above the image, black text.

Legacy layout (legacy-server.md §5.3): text left-justified from x = 0 at the top, at most 63
characters, cut at the right edge. The legacy bitmap font (9×15 bold, ASCII only) is replaced
by DejaVu Sans Mono Bold at 15 px, whose 9-pixel advance matches the old cells, so any Unicode
text renders (glyphs the font lacks show as boxes). The legacy off-by-one rows (B2) are gone.
"""

from __future__ import annotations

import functools
import unicodedata

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import RequestError

FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
"""Debian package fonts-dejavu-core; Pillow's own default font is used if it is absent."""

MAX_LABEL_CHARS = 63
FULL_FONT_SIZE_PX = 15
"""Glyph size once the banner is 16 rows or more; smaller banners scale it down."""

Image8 = npt.NDArray[np.uint8]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def label_text(label: str, frame: int, first_frame: int, last_frame: int) -> str:
    """The label alone for a single-frame file, else "<label> <frame>"; at most 63 characters."""
    text = label if first_frame == last_frame else f"{label} {frame}"
    return text[:MAX_LABEL_CHARS]


def check_label_height(height_px: int, limits: LimitSettings = DEFAULT_LIMITS) -> None:
    """RequestError unless 0 ≤ height_px ≤ ``limits.max_label_height_px``: the one check of
    the banner height, so the configured limit is the same wherever a banner is drawn."""
    top = limits.max_label_height_px
    if not 0 <= height_px <= top:
        raise RequestError(
            f"label height {height_px} is outside 0..{top} pixels ([limits] max_label_height_px)"
        )


def add_label(
    rgb: Image8, text: str, height_px: int, *, limits: LimitSettings = DEFAULT_LIMITS
) -> Image8:
    """A copy of the image with the banner on top: shape (h + height_px, w[, 3])."""
    check_label_height(height_px, limits)
    if height_px == 0:
        return rgb
    banner = render_banner(text, rgb.shape[1], height_px)
    out = np.empty((rgb.shape[0] + height_px, *rgb.shape[1:]), dtype=np.uint8)
    out[:height_px] = banner if rgb.ndim == 2 else banner[:, :, np.newaxis]
    out[height_px:] = rgb
    return out


def render_banner(text: str, width_px: int, height_px: int) -> Image8:
    """(height_px, width_px) uint8: 255 background, text drawn dark from the top-left corner."""
    size_px = max(1, min(FULL_FONT_SIZE_PX, round(height_px * FULL_FONT_SIZE_PX / 16)))
    font = font_of_size(size_px)
    image = Image.new("L", (width_px, height_px), 255)
    # Baseline at 0.8 em leaves room below it for descenders (DejaVu: 0.24 em).
    baseline_px = round(0.8 * size_px)
    ImageDraw.Draw(image).text(
        (0, baseline_px), printable(text, font), fill=0, font=font, anchor="ls"
    )
    return np.asarray(image)


def printable(text: str, font: Font) -> str:
    """Control characters become spaces (legacy: they kept their cell); unpaired surrogates
    become U+FFFD; a bitmap fallback font gets Latin-1 only."""
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    if not isinstance(font, ImageFont.FreeTypeFont):
        text = text.encode("latin-1", errors="replace").decode("latin-1")
    return text


@functools.lru_cache(maxsize=FULL_FONT_SIZE_PX)  # sizes are 1..FULL_FONT_SIZE_PX
def font_of_size(size_px: int) -> Font:
    try:
        return ImageFont.truetype(FONT_PATH, size_px)
    except OSError:
        return ImageFont.load_default(size_px)
