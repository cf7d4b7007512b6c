"""JPEG and PNG bytes: decodable, right size, overloads still red, 16-bit PNG exact."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from imageserver.errors import RequestError
from imageserver.imaging.colormaps import RED, get_colormap, rgb_to_ycc
from imageserver.imaging.encode import encode_jpeg, encode_jpeg_ycc, encode_png


def test_jpeg_decodes_to_the_image_within_tolerance() -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 64 * 48).reshape(48, 64).astype(np.uint8)
    image = np.stack([ramp, ramp[::-1], rng.integers(100, 110, ramp.shape, dtype=np.uint8)], -1)
    data = encode_jpeg(image, 95)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    decoded = simplejpeg.decode_jpeg(data)
    assert decoded.shape == (48, 64, 3)
    assert np.abs(decoded.astype(int) - image).mean() < 3


def test_lone_red_overload_pixel_stays_red() -> None:
    image = np.full((32, 32, 3), 255, dtype=np.uint8)
    image[9, 13] = (255, 0, 0)
    decoded = simplejpeg.decode_jpeg(encode_jpeg(image, 90))
    red, green, blue = decoded[9, 13].astype(int)
    assert red > 200 and green < 60 and blue < 60


def _overload_test_planes() -> tuple[np.ndarray, np.ndarray]:
    """A grey ramp beside white with one red pixel, as RGB and as YCbCr planes."""
    image = np.full((33, 41, 3), 255, dtype=np.uint8)  # odd sizes: partial chroma blocks
    image[:, :20] = np.linspace(0, 255, 20).astype(np.uint8)[None, :, None]
    image[9, 33] = RED
    return image, np.ascontiguousarray(np.moveaxis(rgb_to_ycc(image), -1, 0))


@pytest.mark.parametrize("subsampling", ["420", "444"])
def test_ycbcr_planes_decode_to_the_rgb_they_came_from(subsampling: str) -> None:
    image, planes = _overload_test_planes()
    keep = get_colormap("grey").overload_chroma
    data = encode_jpeg_ycc(planes, 90, subsampling=subsampling, keep_chroma=keep)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    decoded = simplejpeg.decode_jpeg(data).astype(int)
    assert decoded.shape == image.shape
    assert np.abs(decoded[:, :20] - image[:, :20]).mean() < 3
    assert _is_red(decoded[9, 33])  # a lone overload stays red (4:4:4: 249, 0, 55)


def test_plain_4_2_0_would_turn_a_lone_overload_grey() -> None:
    """Why the overload chroma is kept whole: averaged, the red pixel becomes dark grey."""
    _image, planes = _overload_test_planes()
    decoded = simplejpeg.decode_jpeg(encode_jpeg_ycc(planes, 90, keep_chroma=None)).astype(int)
    assert not _is_red(decoded[9, 33])


def _is_red(pixel: np.ndarray) -> bool:
    """Red as a browser shows it: decoders smooth 4:2:0 chroma ("fancy upsampling"), which
    darkens a kept overload pixel to about (172, 28, 55); averaged it would be (82, 70, 70)."""
    red, green, blue = pixel
    return bool(red > 150 and green < 60 and blue < 80)


def test_views_are_encoded_4_2_0_or_4_4_4_only() -> None:
    _image, planes = _overload_test_planes()
    with pytest.raises(RequestError, match="chroma must be one of 420, 444"):
        encode_jpeg_ycc(planes, 90, subsampling="422")


@pytest.mark.parametrize("shape", [(32, 32), (1, 32, 32), (4, 8, 8), (3, 0, 8)])
def test_ycbcr_encoding_refuses_anything_but_three_planes(shape: tuple[int, ...]) -> None:
    with pytest.raises(RequestError, match="planes"):
        encode_jpeg_ycc(np.zeros(shape, dtype=np.uint8))


def test_greyscale_image_is_encoded_as_one_channel() -> None:
    image = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    decoded = simplejpeg.decode_jpeg(encode_jpeg(image), colorspace="GRAY")
    assert decoded.shape == (10, 64, 1)
    assert np.abs(decoded[:, :, 0].astype(int) - image).max() < 8
    assert encode_jpeg(image[:, :, None]) == encode_jpeg(image)


def test_higher_quality_is_larger() -> None:
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert len(encode_jpeg(image, 30)) < len(encode_jpeg(image, 95))


@pytest.mark.parametrize("quality", [0, 101, 90.0, True])
def test_quality_outside_1_to_100_is_rejected(quality: object) -> None:
    with pytest.raises(RequestError, match="JPEG quality must be an integer from 1 to 100"):
        encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8), quality)  # type: ignore[arg-type]


def test_jpeg_rejects_non_uint8_and_odd_channel_counts() -> None:
    with pytest.raises(RequestError, match="takes a non-empty uint8 image, not uint16"):
        encode_jpeg(np.zeros((8, 8), dtype=np.uint16))  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="cannot encode an image with 4 channels"):
        encode_jpeg(np.zeros((8, 8, 4), dtype=np.uint8))


def test_png_16_bit_round_trips_exactly() -> None:
    image = np.random.default_rng(2).integers(0, 65536, (37, 53), dtype=np.uint16)
    image[0, 0], image[-1, -1] = 0, 65535
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
    assert decoded.shape == (37, 53)
    assert np.array_equal(decoded.astype(np.uint16), image)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3)])
def test_png_8_bit_round_trips_exactly(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, image)


def test_png_rejects_32_bit_images() -> None:
    with pytest.raises(RequestError, match="PNG export takes 8-bit grey or RGB or 16-bit grey"):
        encode_png(np.zeros((4, 4), dtype=np.uint32))  # type: ignore[arg-type]
