"""Helpers of the cache tests: a redis-server, small synthetic frames and reduced views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imageserver.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from imageserver.formats.base import Frame, FrameMeta
from imageserver.render import ReducedView, ViewSpec, reduce_view


def start_redis(directory: Path) -> EmbeddedRedis:
    try:
        return EmbeddedRedis(directory).start()
    except EmbeddedRedisError as exc:
        pytest.fail(f"{exc}; scripts/test installs redis-server")


def synthetic_frame(seed: int, width_px: int = 64, height_px: int = 48) -> Frame:
    """A small frame with counts, a masked corner, saturated pixels and a beam centre."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 1000, (height_px, width_px), dtype=np.uint32)
    pixels[:3, :3] = np.iinfo(np.uint32).max
    pixels[10, 10:13] = 950
    meta = FrameMeta(
        format_name="synthetic",
        width_px=width_px,
        height_px=height_px,
        bit_depth=32,
        beam_center_x_px=width_px / 2 + 0.5,
        beam_center_y_px=height_px / 2 - 1.5,
        saturation_value=900,
        native={"seed": seed},
    )
    return Frame(pixels=pixels, mask=None, meta=meta, number=1, path=Path(f"/synthetic/{seed}"))


def make_view(seed: int, xsize: int = 32) -> ReducedView:
    frame = synthetic_frame(seed)
    return reduce_view(frame, ViewSpec(frame.path, xsize=xsize), fn=f"frame-{seed}")


def assert_same_view(found: ReducedView | None, expected: ReducedView) -> None:
    assert found is not None
    assert found.reduced.values.dtype == expected.reduced.values.dtype
    np.testing.assert_array_equal(found.reduced.values, expected.reduced.values)
    np.testing.assert_array_equal(found.reduced.flags, expected.reduced.flags)
    assert found.reduced.view == expected.reduced.view
    assert found.reduced.saturated_source_px == expected.reduced.saturated_source_px
    assert found.stats == expected.stats
    assert found.meta == expected.meta
