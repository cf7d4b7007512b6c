"""The manager–worker messages and the legacy rendering of typed replies (pure logic)."""

from __future__ import annotations

import pytest

from imageserver.errors import DeadlineError, FileAccessError, InternalError, RequestError
from imageserver.service import link
from imageserver.service.reply import Failure, Success
from imageserver.stage_times import StageTimes
from imageserver.transports.frames import MAX_ERROR_BYTES, legacy_frames


def test_requests_and_replies_round_trip() -> None:
    job = link.Job(b"\x00\x00\x00\x00\x00\x00\x00\x07", 123_456_789_000, b'{"type":"jpeg"}')
    assert link.read_request(link.request(job)) == job
    success = Success((b"{}", b"{}", b"\xff\xd8"))
    assert link.read_reply(link.reply(b"id", success)) == (b"id", success, None)
    failure = Failure.of(FileAccessError("/data/x.cbf: permission denied"), fallback=(b"j", b""))
    assert link.read_reply(link.reply(b"id", failure)) == (b"id", failure, None)
    started = Failure.of(RequestError("no"))
    assert link.read_failed(link.failed(started)) == started
    assert link.read_grant(link.welcome({"cache": {"user": "u"}})) == {"cache": {"user": "u"}}


def test_a_reply_carries_the_worker_stage_times() -> None:
    timings = b'{"decode":2000000,"reduce":5000000,"encode":1500000,"source":"file"}'
    request_id, reply, times = link.read_reply(link.reply(b"id", Success((b"j",)), timings))
    assert (request_id, reply) == (b"id", Success((b"j",)))
    assert times == StageTimes({"decode": 0.002, "reduce": 0.005, "encode": 0.0015}, "file")
    failure = Failure.of(RequestError("no"))
    assert link.read_reply(link.reply(b"id", failure, timings))[1:] == (failure, times)


@pytest.mark.parametrize(
    "timings", [b"{", b"[1]", b'{"decode":"x"}' + b" " * 300, b"\xff\xfe", b"null"]
)
def test_malformed_stage_times_are_ignored_not_the_reply(timings: bytes) -> None:
    request_id, reply, times = link.read_reply(link.reply(b"id", Success((b"j",)), timings))
    assert (request_id, reply, times) == (b"id", Success((b"j",)), None)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"reply"],
        [b"reply", b"id"],
        [b"reply", b"id", b""],
        [b"reply", b"id", b"", b"maybe"],
        [b"reply", b"id", b"ok"],
        [b"reply", b"id", b"", b"err", b"code"],
        [b"reply", b"id", b"", b"err", b"c", b"e", b"r", b"x" * (link.MAX_TEXT_BYTES + 1)],
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
