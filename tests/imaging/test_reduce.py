"""Max-pool reduction: hand-computed cases, and the numba path equal to the NumPy reference."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import bitshuffle
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.errors import CorruptFrameError
from imageserver.formats.base import EncodedFrame, Frame, FrameMeta
from imageserver.formats.bslz4 import Bslz4Stream
from imageserver.imaging.geometry import View, plan_view
from imageserver.imaging.reduce import Flags, Reduced, reduce_frame, warm_up
from imageserver.imaging.reference import reduce_frame_reference

M16 = 0xFFFF
REDUCERS = [reduce_frame, reduce_frame_reference]


def frame_of(
    pixels: npt.NDArray[np.uint16] | npt.NDArray[np.uint32],
    mask: npt.NDArray[np.uint8] | None = None,
    saturation: int | None = None,
) -> Frame:
    height, width = pixels.shape
    bits = pixels.dtype.itemsize * 8
    meta = FrameMeta("test", width, height, bits, saturation_value=saturation)
    return Frame(pixels=pixels, mask=mask, meta=meta, number=1, path=Path("test.h5"))


def view_of(width_px: int, height_px: int, x0: float, y0: float, w: float, h: float) -> View:
    return View(width_px, height_px, x0, y0, w, h, 1.0, 0.0, 0.0)


@pytest.mark.parametrize("reduce", REDUCERS)
def test_four_by_four_into_two_by_two_takes_box_maxima(reduce) -> None:  # type: ignore[no-untyped-def]
    pixels = np.array(
        [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]], dtype=np.uint16
    )
    reduced = reduce(frame_of(pixels), view_of(2, 2, 0, 0, 4, 4))
    assert reduced.values.tolist() == [[6, 8], [14, 16]]
    assert reduced.values.dtype == np.uint16
    assert reduced.flags.tolist() == [[0, 0], [0, 0]]
    assert reduced.saturated_source_px == 0


@pytest.mark.parametrize("reduce", REDUCERS)
def test_masked_and_marker_pixels_are_skipped(reduce) -> None:  # type: ignore[no-untyped-def]
    pixels = np.array(
        [[1, 2, M16, M16], [5, 60, M16, M16], [9, 10, 11, 12], [13, 14, 15, 16]],
        dtype=np.uint16,
    )
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1, 1] = 1  # hides the 60
    mask[3, 3] = 4  # any non-zero value is bad
    reduced = reduce(frame_of(pixels, mask), view_of(2, 2, 0, 0, 4, 4))
    assert reduced.values.tolist() == [[5, 0], [14, 15]]
    assert reduced.flags.tolist() == [[Flags.OK, Flags.MASKED], [Flags.OK, Flags.OK]]


@pytest.mark.parametrize("reduce", REDUCERS)
def test_magnified_two_by_two_repeats_nearest_pixels(reduce) -> None:  # type: ignore[no-untyped-def]
    pixels = np.array([[1, 2], [3, 4]], dtype=np.uint32)
    reduced = reduce(frame_of(pixels), view_of(4, 4, 0, 0, 2, 2))
    assert reduced.values.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert reduced.values.dtype == np.uint32


@pytest.mark.parametrize("reduce", REDUCERS)
def test_saturation_flags_boxes_and_counts_source_pixels_once(reduce) -> None:  # type: ignore[no-untyped-def]
    pixels = np.array([[100, 1], [1, 1]], dtype=np.uint16)
    frame = frame_of(pixels, saturation=100)
    shrunk = reduce(frame, view_of(1, 1, 0, 0, 2, 2))
    assert (shrunk.values.tolist(), shrunk.flags.tolist()) == ([[100]], [[Flags.SATURATED]])
    assert shrunk.saturated_source_px == 1
    magnified = reduce(frame, view_of(4, 4, 0, 0, 2, 2))  # the 100 fills 2 × 2 outputs
    assert magnified.flags[:2, :2].tolist() == [[Flags.SATURATED] * 2] * 2
    assert magnified.saturated_source_px == 1


@pytest.mark.parametrize("reduce", REDUCERS)
def test_without_a_saturation_value_the_top_real_value_saturates(reduce) -> None:  # type: ignore[no-untyped-def]
    pixels = np.array([[M16 - 1, M16 - 2, M16]], dtype=np.uint16)
    reduced = reduce(frame_of(pixels), view_of(3, 1, 0, 0, 3, 1))
    assert reduced.flags.tolist() == [[Flags.SATURATED, Flags.OK, Flags.MASKED]]
    assert reduced.values.tolist() == [[M16 - 1, M16 - 2, 0]]
    assert reduced.saturated_source_px == 1


@pytest.mark.parametrize("reduce", REDUCERS)
def test_off_image_tile_is_masked(reduce) -> None:  # type: ignore[no-untyped-def]
    pixels = np.arange(1, 17, dtype=np.uint32).reshape(4, 4)
    # A window of columns 6..8 lies wholly right of the 4-column frame; 3..5 half on it.
    view = View(2, 2, 6.0, 0.0, 2.0, 2.0, 2.0, 1.5, 0.0)
    reduced = reduce(frame_of(pixels), view)
    assert reduced.values.tolist() == [[0, 0], [0, 0]]
    assert reduced.flags.tolist() == [[Flags.MASKED] * 2] * 2
    edge = reduce(frame_of(pixels), View(2, 2, 3.0, 0.0, 2.0, 2.0, 2.0, 1.5, 0.0))
    assert edge.values.tolist() == [[4, 0], [8, 0]]
    assert edge.flags.tolist() == [[Flags.OK, Flags.MASKED], [Flags.OK, Flags.MASKED]]


def test_result_records_its_view() -> None:
    view = plan_view(40, 20, xsize=8)
    reduced = reduce_frame(frame_of(np.ones((20, 40), dtype=np.uint16)), view)
    assert reduced.view == view
    assert reduced.values.shape == reduced.flags.shape == (4, 8)


def test_wrong_pixel_dtype_is_a_frame_error() -> None:
    frame = frame_of(np.ones((4, 4), dtype=np.uint16))
    bad = Frame(np.ones((4, 4), dtype=np.int32), None, frame.meta, 3, Path("x.cbf"))  # type: ignore[arg-type]
    with pytest.raises(CorruptFrameError, match=r"x.cbf frame 3: pixels are int32 \(4, 4\)"):
        reduce_frame(bad, view_of(2, 2, 0, 0, 4, 4))


def test_mask_of_another_shape_is_a_frame_error() -> None:
    frame = frame_of(np.ones((4, 4), dtype=np.uint16), np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(
        CorruptFrameError, match=r"pixel mask is \(5, 4\) but the frame is \(4, 4\)"
    ):
        reduce_frame(frame, view_of(2, 2, 0, 0, 4, 4))


@pytest.mark.parametrize("reduce", REDUCERS)
def test_non_uint8_and_strided_inputs_are_accepted(
    reduce: Callable[[Frame, View], Reduced],
) -> None:
    pixels = np.arange(64, dtype=np.uint32).reshape(8, 8)[:, ::2]  # not contiguous
    mask = np.zeros((8, 4), dtype=np.int32)
    mask[0, 0] = 256  # would be 0 if cast to uint8
    got = reduce(frame_of(pixels, mask), view_of(1, 1, 0, 0, 1, 1))
    assert (got.values.tolist(), got.flags.tolist()) == ([[0]], [[Flags.MASKED]])


def test_read_only_pixels_and_shared_mask_are_accepted_and_untouched() -> None:
    pixels = np.arange(16, dtype=np.uint16).reshape(4, 4)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[3, 3] = 1
    pixels.setflags(write=False)
    mask.setflags(write=False)  # readers share one mask between frames
    got = reduce_frame(frame_of(pixels, mask), view_of(2, 2, 0, 0, 4, 4))
    assert got.values.tolist() == [[5, 7], [13, 14]]
    assert pixels[3, 3] == 15 and mask[3, 3] == 1


@st.composite
def frames_and_views(draw: st.DrawFn) -> tuple[Frame, View]:
    """Random frames (both dtypes, masks, markers, saturation) and awkward views."""
    dtype = draw(st.sampled_from([np.uint16, np.uint32]))
    height, width = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = int(np.iinfo(dtype).max)
    pixels = rng.integers(0, draw(st.sampled_from([3, 1000, top])), (height, width), endpoint=True)
    special = rng.random((height, width))
    pixels[special < draw(st.sampled_from([0.0, 0.02, 0.3]))] = top  # markers
    pixels[special > 1 - draw(st.sampled_from([0.0, 0.02]))] = top - 1  # at saturation
    mask = None
    if draw(st.booleans()):
        mask = (rng.random((height, width)) < draw(st.sampled_from([0.01, 0.5, 1.0]))).astype(
            np.uint8
        ) * rng.integers(1, 255, (height, width), dtype=np.uint8)
    saturation = draw(st.sampled_from([None, 0, 2, 500, top - 1, top]))
    frame = frame_of(np.ascontiguousarray(pixels.astype(dtype)), mask, saturation)
    if draw(st.booleans()):
        view = plan_view(
            width,
            height,
            xsize=draw(st.integers(8, 200)),
            # An automatic height can exceed the 10000 px limit on a 1-pixel-wide frame.
            ysize=draw(
                st.integers(8, 200) if height > 40 * width else st.none() | st.integers(8, 200)
            ),
            zoom=draw(st.floats(0.5, 8.0)),
            segcol=draw(st.floats(-1.5, 8.5)),
            segrow=draw(st.floats(-1.5, 8.5)),
        )
    else:
        view = view_of(
            draw(st.integers(1, 200)),
            draw(st.integers(1, 200)),
            draw(st.floats(-width, 2 * width)),
            draw(st.floats(-height, 2 * height)),
            draw(st.floats(0.3, 2.5 * width)),
            draw(st.floats(0.3, 2.5 * height)),
        )
    return frame, view


def assert_same(got: Reduced, expected: Reduced) -> None:
    assert got.values.dtype == expected.values.dtype
    np.testing.assert_array_equal(got.flags, expected.flags)
    np.testing.assert_array_equal(got.values, expected.values)
    assert got.saturated_source_px == expected.saturated_source_px


@settings(max_examples=300, deadline=None)
@given(frames_and_views())
def test_numba_equals_reference(case: tuple[Frame, View]) -> None:
    frame, view = case
    assert_same(reduce_frame(frame, view), reduce_frame_reference(frame, view))


def test_large_views_split_over_threads_equal_reference() -> None:
    rng = np.random.default_rng(7)
    pixels = rng.poisson(3.0, (1100, 1000)).astype(np.uint32)  # above the parallel threshold
    pixels[rng.random(pixels.shape) < 0.001] = 0xFFFFFFFE
    pixels[:, 500:510] = 0xFFFFFFFF
    mask = (rng.random(pixels.shape) < 0.01).astype(np.uint8)
    frame = frame_of(pixels, mask)
    view = plan_view(1000, 1100, xsize=250)
    assert_same(reduce_frame(frame, view), reduce_frame_reference(frame, view))


def test_forked_child_can_reduce_after_parent_did() -> None:
    """Workers are forked from a process that already ran the kernels (the zygote)."""
    frame = frame_of(np.ones((1100, 1000), dtype=np.uint32))
    view = plan_view(1000, 1100, xsize=100)
    warm_up()
    expected = reduce_frame(frame, view)  # starts the thread pool in this process
    pid = os.fork()
    if pid == 0:  # child: exit 0 only if the reduction works and matches
        ok = False
        try:
            ok = bool(np.array_equal(reduce_frame(frame, view).values, expected.values))
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child did not finish its reduction within 30 s")


@pytest.mark.slow
def test_full_size_eiger_frame_equals_reference() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.poisson(2.0, (4362, 4148)).astype(np.uint32)
    pixels[:, 1028:1040] = 0xFFFFFFFF
    pixels[rng.random(pixels.shape) < 1e-5] = 0xFFFFFFFE
    mask = (rng.random(pixels.shape) < 1e-4).astype(np.uint8)
    frame = frame_of(pixels, mask)
    view = plan_view(4148, 4362, xsize=1024)
    assert_same(reduce_frame(frame, view), reduce_frame_reference(frame, view))


def encoded(frame: Frame, block_elements: int) -> EncodedFrame:
    """The frame as an Eiger chunk would hold it: one bitshuffle-LZ4 stream."""
    data = bytes(bitshuffle.compress_lz4(frame.pixels.ravel(), block_elements))
    stream = Bslz4Stream.checked(data, 0, frame.pixels.size, frame.pixels.dtype, block_elements)
    return EncodedFrame(stream, frame.mask, frame.meta, frame.number, frame.path)


@settings(max_examples=200, deadline=None)
@given(frames_and_views(), st.sampled_from([8, 64, 2048]), st.sampled_from([1, 300, 1 << 18]))
def test_an_encoded_frame_reduced_strip_by_strip_equals_the_reference(
    case: tuple[Frame, View], block_elements: int, strip_elements: int
) -> None:
    """Strips of one row up to the whole frame, blocks smaller and larger than a row."""
    frame, view = case
    source = encoded(frame, block_elements)
    got = reduce_frame(source, view, strip_elements=strip_elements)
    assert_same(got, reduce_frame_reference(frame, view))
    np.testing.assert_array_equal(source.decode().pixels, frame.pixels)


def test_a_large_encoded_frame_split_over_threads_and_strips_equals_reference() -> None:
    rng = np.random.default_rng(11)
    pixels = rng.poisson(3.0, (1100, 1000)).astype(np.uint32)
    pixels[rng.random(pixels.shape) < 0.001] = 0xFFFFFFFE
    pixels[:, 500:510] = 0xFFFFFFFF
    frame = frame_of(pixels, (rng.random(pixels.shape) < 0.01).astype(np.uint8))
    source = encoded(frame, 2048)
    for view in (
        plan_view(1000, 1100, xsize=250),
        plan_view(1000, 1100, xsize=256, zoom=4, segcol=2, segrow=1),
        plan_view(1000, 1100, xsize=8),
    ):
        got = reduce_frame(source, view, strip_elements=20_000)
        assert_same(got, reduce_frame_reference(frame, view))


def test_a_damaged_block_fails_the_reduction_with_a_corrupt_frame_error() -> None:
    """Block lengths are checked when the stream is read; a block's content only when a
    strip is decoded, which must fail cleanly and never crash."""
    frame = frame_of(np.random.default_rng(5).integers(0, 9, (64, 64), dtype=np.uint32))
    data = bytearray(bitshuffle.compress_lz4(frame.pixels.ravel(), 256))
    data[4:36] = b"\xff" * 32  # the first block's LZ4 tokens, its length untouched
    stream = Bslz4Stream.checked(bytes(data), 0, frame.pixels.size, np.dtype(np.uint32), 256)
    source = EncodedFrame(stream, None, frame.meta, 1, Path("x.h5"), origin="x_data.h5: chunk")
    with pytest.raises(CorruptFrameError, match=r"^x_data\.h5: chunk is corrupt"):
        reduce_frame(source, plan_view(64, 64, xsize=32))
