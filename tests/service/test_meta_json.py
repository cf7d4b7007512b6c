"""The meta frame's JSON: the same bytes as encoding each request's meta afresh."""

from __future__ import annotations

import json

import pytest

from imageserver.service.meta_json import MetaJsonCache, encode_meta


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
