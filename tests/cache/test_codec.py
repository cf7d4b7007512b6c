"""Binary cache entries: exact round trips, and no crash on any damaged or hostile entry."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from cache_samples import assert_same_view, make_view, synthetic_frame

from imageserver.cache.codec import (
    MAGIC,
    DimsCodec,
    FrameCodec,
    JsonCodec,
    ViewCodec,
    encode_entry,
)
from imageserver.errors import CacheUnavailableError
from imageserver.formats import open_frame
from imageserver.render import ViewSpec, reduce_view
from imageserver.sampledata.dataset import EIGER4M16_STEM, EIGER16M_MASTER


@pytest.mark.parametrize("master", [EIGER16M_MASTER, f"{EIGER4M16_STEM}_master.h5"])
def test_a_view_of_each_pixel_type_comes_back_exactly(sample_dir: Path, master: str) -> None:
    path = sample_dir / master
    view = reduce_view(open_frame(path, 1), ViewSpec(path, xsize=300), fn=str(path))
    data = ViewCodec().encode(view)
    assert_same_view(ViewCodec().decode(data), view)
    assert len(data) < view.nbytes / 3  # compressed
    assert not pickle_in(data)


def pickle_in(data: bytes) -> bool:
    return b"\x80\x04\x95" in data[:64] or b"\x80\x05\x95" in data[:64]


def test_frame_sizes_and_whole_frames_come_back_exactly(sample_dir: Path) -> None:
    assert DimsCodec().decode(DimsCodec().encode((4148, 4362))) == (4148, 4362)
    frame = open_frame(sample_dir / EIGER16M_MASTER, 2)
    back = FrameCodec().decode(FrameCodec().encode(frame))
    np.testing.assert_array_equal(back.pixels, frame.pixels)
    assert frame.mask is not None and back.mask is not None
    np.testing.assert_array_equal(back.mask, frame.mask)
    assert (back.meta, back.number, back.path) == (frame.meta, 2, frame.path)


def test_an_entry_of_another_kind_is_refused_by_name() -> None:
    expected = r"invalid view cache entry: it holds a b'dims'"
    with pytest.raises(CacheUnavailableError, match=expected):
        ViewCodec().decode(DimsCodec().encode((10, 10)))


def test_every_truncation_is_refused() -> None:
    data = ViewCodec().encode(make_view(1, xsize=16))
    for length in range(len(data)):
        with pytest.raises(CacheUnavailableError, match="invalid view cache entry"):
            ViewCodec().decode(data[:length])


def test_random_damage_never_crashes_the_process() -> None:
    """Flipped bytes anywhere, in particular in bitshuffle's block lengths, which it trusts."""
    data = bytearray(ViewCodec().encode(make_view(2, xsize=40)))
    rng = np.random.default_rng(7)
    outcomes = {"refused": 0, "decoded": 0}
    for _ in range(3000):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 4)):
            damaged[position] = int(rng.integers(0, 256))
        try:
            view = ViewCodec().decode(bytes(damaged))
        except CacheUnavailableError:
            outcomes["refused"] += 1
            continue
        outcomes["decoded"] += 1
        planned = view.reduced.view
        assert view.reduced.values.shape == (planned.height_px, planned.width_px)
        assert int(view.reduced.flags.max()) <= 2
    assert outcomes["refused"] > 1000


def hostile(header: dict[str, object], arrays: list[np.ndarray] | None = None) -> bytes:
    return encode_entry("view", header, arrays or [])


def test_hostile_headers_are_refused_before_any_large_allocation() -> None:
    huge = {"arrays": [{"dtype": "<u4", "shape": [1 << 14, 1 << 14], "nbytes": 8}]}
    with pytest.raises(CacheUnavailableError, match="compressed array truncated"):
        ViewCodec().decode(raw_entry(huge, bytes(8)))
    cases = {
        "unsupported dtype": {"arrays": [{"dtype": "|O", "shape": [2, 2], "nbytes": 0}]},
        "bad array shape": {"arrays": [{"dtype": "<u4", "shape": [1 << 20, 1 << 20], "nbytes": 0}]},
        "field 'view' is missing": {"arrays": []},
    }
    for message, header in cases.items():
        with pytest.raises(CacheUnavailableError, match=message):
            ViewCodec().decode(raw_entry(header))


def raw_entry(header: dict[str, object], payload: bytes = b"") -> bytes:
    """An entry exactly as a hostile writer would send it: its own header, its own bytes."""
    text = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", 4) + b"view" + struct.pack("<I", len(text)) + text + payload


def test_arrays_that_do_not_match_the_view_or_flags_out_of_range_are_refused() -> None:
    view = make_view(4)
    encoded = json.loads(_header_text(ViewCodec().encode(view)))
    del encoded["arrays"]
    values, flags = view.reduced.values, view.reduced.flags
    with pytest.raises(CacheUnavailableError, match="arrays do not match"):
        ViewCodec().decode(hostile(encoded, [values[:-1], flags[:-1]]))
    bad_flags = flags.copy()
    bad_flags[0, 0] = 7
    with pytest.raises(CacheUnavailableError, match="flags out of range"):
        ViewCodec().decode(hostile(encoded, [values, bad_flags]))
    encoded["meta"] = {"fn": "x"}
    with pytest.raises(CacheUnavailableError, match="field 'frame'"):
        ViewCodec().decode(hostile(encoded, [values, flags]))


def _header_text(data: bytes) -> bytes:
    kind_length = struct.unpack_from("<I", data, 4)[0]
    position = 8 + kind_length
    text_length = struct.unpack_from("<I", data, position)[0]
    return data[position + 4 : position + 4 + text_length]


def test_a_synthetic_frame_round_trips_without_a_mask() -> None:
    frame = synthetic_frame(5)
    back = FrameCodec().decode(FrameCodec().encode(frame))
    assert back.mask is None
    np.testing.assert_array_equal(back.pixels, frame.pixels)


def test_an_analysis_result_comes_back_as_the_same_json() -> None:
    document = {"n_spots_total": 3, "estimated_d_min": 2.5, "spots": [{"x": 1.5, "d_a": None}]}
    data = json.dumps(document).encode()
    codec = JsonCodec()
    assert json.loads(codec.decode(codec.encode(data))) == document
    with pytest.raises(CacheUnavailableError):
        codec.decode(encode_entry("analysis", {"json": [1, 2]}, []))
    with pytest.raises(CacheUnavailableError):
        codec.decode(DimsCodec().encode((10, 10)))
