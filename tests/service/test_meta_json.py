"""The meta frame's JSON: the same bytes as encoding each request's meta afresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageserver.formats import read_meta
from imageserver.formats.legacy import legacy_meta
from imageserver.service import jobs
from imageserver.service.meta_json import MetaJsonCache, encode_meta
from imageserver.service.reply import Success


def test_cached_json_equals_a_fresh_encoding_for_each_spelling_of_fn() -> None:
    meta = {"fn": "first.h5", "mean": 1.5, "chi": [0.0] * 5, "zz": "last", "a": None}
    cache = MetaJsonCache()
    for fn in ("first.h5", "../data/x.h5", 'odd "quoted" \\ name é', "\x00fn\x00"):
        expected = encode_meta({**meta, "fn": fn})
        assert cache.encode(meta, fn) == expected
        assert cache.encode(meta, fn) == expected  # from the template
        assert json.loads(expected)["fn"] == fn


def test_a_new_meta_object_gets_its_own_template_even_at_a_reused_address() -> None:
    cache = MetaJsonCache(capacity=2)
    for value in range(10):
        meta = {"value": value}
        assert json.loads(cache.encode(meta, "f"))["value"] == value
        del meta  # the next dict may take the same id(); the cache keeps its own reference


def test_nan_is_refused_as_before() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        MetaJsonCache().encode({"mean": float("nan")}, "f")


@pytest.mark.parametrize("frame", [1, 7, 3600])
def test_a_series_meta_with_fn_and_frame_equals_a_fresh_encoding(frame: int) -> None:
    series = {"fn": "", "frame": 0, "omega": [0.1] * 48, "first_frame": 1, "zz": {"frame": 2}}
    cache = MetaJsonCache()
    for fn in ("a_master.h5", 'odd "frame":1 name', "\x00frame\x00"):
        expected = encode_meta({**series, "fn": fn, "frame": frame})
        assert cache.encode_frame(series, fn, frame) == expected
        assert cache.encode_frame(series, fn, frame) == expected  # from the template


def test_a_meta_reply_is_the_legacy_meta_of_that_frame(sample_dir: Path) -> None:
    """Through the job: the same bytes as `legacy_meta` encoded afresh, for every format."""
    checked = []
    for path in sorted(sample_dir.iterdir()):
        if path.name.endswith(("_data_000001.h5", "_data_000002.h5")):
            continue
        checked.append(path.name)
        meta = read_meta(path)
        for frame in {meta.first_frame, meta.last_frame}:
            payload = {"type": "meta", "pid": "p", "fn": str(path), "frame": frame}
            reply = jobs.handle(json.dumps(payload).encode())
            assert isinstance(reply, Success), (path, reply)
            expected = legacy_meta(meta, fn=str(path), frame=frame)
            assert reply.parts[1] == encode_meta(expected), path
    assert len(checked) >= 5, checked
