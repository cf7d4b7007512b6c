"""The shared wording of an out-of-range frame and the size check every reader makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import CorruptFrameError, FrameRangeError, FrameTooLargeError
from imageserver.formats.base import MAX_SIDE_PX, check_frame_size, frame_range_error


def test_frame_range_error_has_one_exact_wording() -> None:
    error = frame_range_error("data/x_master.h5", 0, 1, 90)
    assert isinstance(error, FrameRangeError) and error.code == "frame_out_of_range"
    assert str(error) == "data/x_master.h5: frame 0 is outside the file's frames 1–90"
    assert str(frame_range_error(Path("/d/a.cbf"), 2, 1, 1)) == (
        "/d/a.cbf: frame 2 is outside the file's frames 1–1"
    )


@pytest.mark.parametrize(
    ("width", "height"),
    [(0, 10), (10, 0), (-4, 32), (MAX_SIDE_PX + 1, 1), (1, 1 << 40)],
)
def test_impossible_sizes_are_corrupt(width: int, height: int) -> None:
    with pytest.raises(CorruptFrameError, match=rf"^f\.img: .* {width} x {height} pixels$"):
        check_frame_size("f.img", width, height, DEFAULT_LIMITS)


def test_sizes_up_to_the_limit_pass_and_beyond_are_too_large() -> None:
    limits = LimitSettings(max_frame_pixels=1 << 20)
    check_frame_size("f.cbf", 1024, 1024, limits)
    check_frame_size("f.cbf", MAX_SIDE_PX, 1, limits)
    with pytest.raises(
        FrameTooLargeError,
        match=r"^f\.cbf: the frame is 1025 x 1024 = 1049600 pixels, more than the limit of "
        r"1048576 \(limits\.max_frame_pixels\)$",
    ):
        check_frame_size("f.cbf", 1025, 1024, limits)
