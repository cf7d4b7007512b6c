"""The label banner: exact rows on top, white background, dark text, any Unicode."""

from __future__ import annotations

import re

import numpy as np
import pytest

from imageserver.config import LimitSettings
from imageserver.errors import RequestError
from imageserver.imaging.label import add_label, label_text, render_banner


def grey_image(height: int = 20, width: int = 200) -> np.ndarray:
    return np.full((height, width, 3), 128, dtype=np.uint8)


def test_text_is_the_label_alone_for_a_single_frame_file() -> None:
    assert label_text("lysozyme_1", 7, 1, 1) == "lysozyme_1"
    assert label_text("lysozyme_1", 7, 1, 1800) == "lysozyme_1 7"


def test_text_is_cut_to_63_characters() -> None:
    assert label_text("x" * 70, 1, 1, 1) == "x" * 63
    assert label_text("y" * 62, 123, 1, 200) == "y" * 62 + " "


@pytest.mark.parametrize("height", [1, 15, 16, 17, 64])
def test_banner_adds_exactly_its_rows_on_top(height: int) -> None:
    image = grey_image()
    out = add_label(image, "frame 1", height)
    assert out.shape == (20 + height, 200, 3)
    np.testing.assert_array_equal(out[height:], image)


def test_banner_is_white_with_dark_text_from_the_left() -> None:
    out = add_label(grey_image(), "ABC", 16)
    banner = out[:16, :, 0]
    assert np.all(out[:16, :, 0:1] == out[:16])  # black and white only, no colour
    dark_columns = np.flatnonzero((banner < 128).any(axis=0))
    assert dark_columns.size > 0
    assert dark_columns.min() < 4 and dark_columns.max() < 3 * 10  # 3 cells of about 9 px
    assert np.all(banner[:, 40:] == 255)


def test_height_zero_returns_the_image_unchanged() -> None:
    image = grey_image()
    assert add_label(image, "anything", 0) is image


@pytest.mark.parametrize("height", [-1, 65])
def test_height_outside_0_to_64_is_rejected(height: int) -> None:
    message = f"label height {height} is outside 0..64 pixels ([limits] max_label_height_px)"
    with pytest.raises(RequestError, match=re.escape(message)):
        add_label(grey_image(), "x", height)


def test_the_configured_height_limit_is_the_one_applied() -> None:
    """The parser keeps banners up to the configured limit; drawing them must not refuse."""
    image = grey_image()
    out = add_label(image, "frame 1", 100, limits=LimitSettings(max_label_height_px=128))
    assert out.shape == (20 + 100, 200, 3)
    assert np.all(out[16:100] == 255)  # below the 15-px glyphs the banner is plain white
    np.testing.assert_array_equal(out[100:], image)
    with pytest.raises(RequestError, match=re.escape("label height 100 is outside 0..64 pixels")):
        add_label(image, "frame 1", 100)
    with pytest.raises(RequestError, match=re.escape("label height 16 is outside 0..8 pixels")):
        add_label(image, "frame 1", 16, limits=LimitSettings(max_label_height_px=8))


@pytest.mark.parametrize(
    "text",
    ["蛋白质晶体 🧪", "e\u0301\u0301 Z\u0336", "tab\there\nnew\x00line", "\ud800 lone", ""],
)
def test_any_unicode_renders(text: str) -> None:
    out = add_label(grey_image(), text, 16)
    assert out.shape == (36, 200, 3)
    if text:
        assert (out[:16] < 128).any()
    else:
        assert np.all(out[:16] == 255)


def test_text_wider_than_the_image_is_cut_at_the_right_edge() -> None:
    banner = render_banner("W" * 63, 50, 16)
    assert banner.shape == (16, 50)
    assert (banner[:, 45:] < 128).any()  # text runs to the edge


def test_greyscale_images_get_a_greyscale_banner() -> None:
    out = add_label(np.zeros((4, 30), dtype=np.uint8), "a", 10)
    assert out.shape == (14, 30)
    assert np.all(out[10:] == 0)
    assert (out[:10] < 128).any() and (out[:10] == 255).any()
