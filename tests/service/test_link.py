"""The manager–worker messages and the legacy rendering of typed replies (pure logic)."""

from __future__ import annotations

import pytest

from imageserver.errors import DeadlineError, FileAccessError, InternalError, RequestError
from imageserver.service import link
from imageserver.service.reply import Failure, Success
from imageserver.transports.frames import MAX_ERROR_BYTES, legacy_frames


def test_requests_and_replies_round_trip() -> None:
    job = link.Job(b"\x00\x00\x00\x00\x00\x00\x00\x07", 123_456_789_000, b'{"type":"jpeg"}')
    assert link.read_request(link.request(job)) == job
    success = Success((b"{}", b"{}", b"\xff\xd8"))
    assert link.read_reply(link.reply(b"id", success)) == (b"id", success)
    failure = Failure.of(FileAccessError("/data/x.cbf: permission denied"), fallback=(b"j", b""))
    assert link.read_reply(link.reply(b"id", failure)) == (b"id", failure)
    started = Failure.of(RequestError("no"))
    assert link.read_failed(link.failed(started)) == started
    assert link.read_grant(link.welcome({"cache": {"user": "u"}})) == {"cache": {"user": "u"}}


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"reply"],
        [b"reply", b"id"],
        [b"reply", b"id", b"maybe"],
        [b"reply", b"id", b"err", b"code"],
        [b"reply", b"id", b"err", b"c", b"e", b"r", b"x" * (link.MAX_TEXT_BYTES + 1)],
        [b"request", b"id", b"short", b"{}"],
    ],
)
def test_a_malformed_message_is_a_link_error(frames: list[bytes]) -> None:
    with pytest.raises(link.LinkError):
        if frames[:1] == [b"request"]:
            link.read_request(frames)
        else:
            link.read_reply(frames)


def test_legacy_rendering_keeps_the_wire_contract() -> None:
    assert legacy_frames(Success((b"job", b"meta", b"jpeg"))) == [b"", b"job", b"meta", b"jpeg"]
    assert legacy_frames(Failure.of(DeadlineError("request timed out after 3 s"))) == [
        b"request timed out after 3 s"
    ]
    grey = Failure.of(FileAccessError("denied"), fallback=(b'{"error":"denied"}', b"", b"jpg"))
    assert legacy_frames(grey) == [b"", b'{"error":"denied"}', b"", b"jpg"]
    long = legacy_frames(Failure.of(InternalError("é" * 5000)))
    assert len(long) == 1 and len(long[0]) <= MAX_ERROR_BYTES
    long[0].decode("utf-8")  # cut on a character boundary
