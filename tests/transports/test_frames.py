"""Splitting legacy request frames and building legacy reply bodies."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from imageserver.service.reply import Failure, Success
from imageserver.transports.frames import (
    MAX_ERROR_BYTES,
    TYPED_MARK,
    error_frames,
    reply_frames,
    split_request,
    success_frames,
)


def test_envelope_is_everything_up_to_the_first_empty_frame() -> None:
    incoming = split_request([b"proxy", b"client", b"", b'{"type":"jpeg"}', b"extra"])
    assert incoming.envelope == (b"proxy", b"client", b"")
    assert incoming.payload == b'{"type":"jpeg"}'
    assert incoming.extra_frames == 1
    assert incoming.problem is None


def test_many_hops_are_allowed() -> None:
    hops = [bytes([i + 1]) for i in range(40)]
    incoming = split_request([*hops, b"", b"{}"])
    assert incoming.envelope == (*hops, b"")


def test_no_delimiter_routes_back_on_all_but_the_last_frame() -> None:
    incoming = split_request([b"proxy", b"dealer-client", b'{"a":1}'])
    assert incoming.problem == "request has no empty delimiter frame"
    assert incoming.envelope == (b"proxy", b"dealer-client")


def test_delimiter_without_payload_is_a_problem() -> None:
    incoming = split_request([b"proxy", b"client", b""])
    assert incoming.problem == "request has no payload after the delimiter"
    assert incoming.envelope == (b"proxy", b"client", b"")


def test_error_text_is_one_frame_cut_to_the_legacy_buffer() -> None:
    assert error_frames("nope") == [b"nope"]
    long = error_frames("é" * 5000)
    assert len(long) == 1
    assert len(long[0]) <= MAX_ERROR_BYTES
    long[0].decode("utf-8")  # never cut inside a character
    assert error_frames("") == [b"error"]


def test_success_starts_with_the_empty_error_slot() -> None:
    assert success_frames(b"job", b"meta") == [b"", b"job", b"meta"]


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=20))
def test_any_frame_list_gives_an_envelope_to_answer_on(frames: list[bytes]) -> None:
    incoming = split_request(frames)
    assert (incoming.problem is None) == (b"" in frames[:-1])
    assert len(incoming.envelope) >= 1


def test_a_typed_client_gets_the_code_of_an_error_and_no_fallback_image() -> None:
    incoming = split_request([b"id", b"", b"{}", TYPED_MARK])
    assert incoming.typed and incoming.payload == b"{}"
    assert not split_request([b"id", b"", b"{}"]).typed
    assert not split_request([b"id", b"", b"{}", b"other"]).typed
    failure = Failure(
        code="file_missing",
        message="x.cbf: file not found",
        error="FileMissingError",
        reason="file_missing",
        fallback=(b"{}", b"", b"\xff\xd8"),
    )
    typed = reply_frames(failure, typed=True)
    assert typed[0] == b"x.cbf: file not found"
    assert json.loads(typed[1]) == {"code": "file_missing", "error": "FileMissingError"}
    assert reply_frames(failure, typed=False) == [b"", b"{}", b"", b"\xff\xd8"]
    assert reply_frames(Success((b"{}", b"m")), typed=True) == [b"", b"{}", b"m"]
