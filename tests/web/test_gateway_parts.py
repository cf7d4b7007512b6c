"""The gateway's pure parts: the per-session limiter, token extraction, status table,
reply decoding, SI geometry."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from imageserver.errors import BusyError, ChainError, all_error_classes
from imageserver.web.app import _same_site_path
from imageserver.web.chain_client import _decode
from imageserver.web.meta import si_geometry
from imageserver.web.sessions import COOKIE_NAME, SessionLimiter, session_token
from imageserver.web.status import STATUS_BY_CODE, http_status


def request_with(headers: dict[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


def test_limiter_bounds_each_session_and_refuses_beyond_its_queue() -> None:
    async def scenario() -> tuple[int, int, bool]:
        limiter = SessionLimiter(concurrency=2, queue=1)
        running = peak = 0
        release = asyncio.Event()

        async def work(token: str) -> None:
            nonlocal running, peak
            async with limiter.turn(token):
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1

        tasks = [asyncio.create_task(work("a")) for _ in range(3)]
        other = asyncio.create_task(work("b"))  # another session is not held up by "a"
        await asyncio.sleep(0.01)
        refused = False
        try:
            async with limiter.turn("a"):
                pass
        except BusyError:
            refused = True
        other_ran = running
        release.set()
        await asyncio.gather(*tasks, other)
        assert limiter.in_use() == 0
        return peak, other_ran, refused

    peak, running_at_once, refused = asyncio.run(scenario())
    assert peak == 3  # two of "a" and the one of "b"
    assert running_at_once == 3
    assert refused


def test_a_cancelled_wait_gives_its_place_back() -> None:
    async def scenario() -> int:
        limiter = SessionLimiter(concurrency=1, queue=1)
        hold = asyncio.Event()

        async def holder() -> None:
            async with limiter.turn("a"):
                await hold.wait()

        async def waiter() -> None:
            async with limiter.turn("a"):
                pass

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        second = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        second.cancel()
        await asyncio.sleep(0)
        hold.set()
        await first
        return limiter.in_use()

    assert asyncio.run(scenario()) == 0


def test_session_token_from_bearer_or_cookie() -> None:
    assert session_token(request_with({"Authorization": "Bearer abc123"})) == "abc123"
    assert session_token(request_with({"Cookie": f"{COOKIE_NAME}=tok"})) == "tok"
    both = {"Authorization": "Bearer first", "Cookie": f"{COOKIE_NAME}=second"}
    assert session_token(request_with(both)) == "first"
    assert session_token(request_with({})) is None
    assert session_token(request_with({"Authorization": "Basic dXNlcg=="})) is None
    assert session_token(request_with({"Authorization": "Bearer " + "x" * 5000})) is None


def test_every_error_code_has_a_deliberate_status() -> None:
    codes = {cls.code for cls in all_error_classes()}
    internal = {
        "error",
        "internal",
        "config",
        "local_service",
        "chain_error",
    }  # the server's own faults
    for code in codes - internal:
        assert code in STATUS_BY_CODE, code
    assert all(http_status(code) == 500 for code in internal)
    assert http_status("anything new") == 500


def test_reply_decoding() -> None:
    ok = _decode([b"", b'{"type":"meta"}', b'{"frame":2}'])
    assert ok.job == {"type": "meta"} and ok.json() == {"frame": 2} and ok.data is None
    image = _decode([b"", b"{}", b"{}", b"\xff\xd8"])
    assert image.data == b"\xff\xd8"
    with pytest.raises(ChainError) as typed:
        _decode([b"file not found", json.dumps({"code": "file_missing"}).encode()])
    assert (typed.value.wire_code, typed.value.message) == ("file_missing", "file not found")
    with pytest.raises(ChainError) as legacy:
        _decode([b"request has no payload"])
    assert legacy.value.wire_code == "internal"
    with pytest.raises(ChainError):
        _decode([])


def test_next_is_kept_on_this_site() -> None:
    assert _same_site_path("/?path=/data/x.h5&frame=2") == "/?path=/data/x.h5&frame=2"
    for target in ("//evil", "https://evil/", "/\\evil", "evil", "/\nx", ""):
        assert _same_site_path(target) == "/"


def test_si_geometry_from_legacy_names() -> None:
    legacy = {
        "frame": 3,
        "first_frame": 1,
        "last_frame": 9,
        "x_pixels_in_detector": 2463,
        "y_pixels_in_detector": 2527,
        "image_depth": 4,
        "beam_center_x": 1231.5,
        "detector_distance": 0.25,
        "wavelength": 1.0,
        "integrationTime": 0.1,
        "detector": "PILATUS3 6M",
        "x_pixel_size": 0.000172,
    }
    geometry = si_geometry(legacy, path="/d/x.cbf")
    assert geometry["wavelength_m"] == pytest.approx(1e-10)
    assert geometry["bit_depth"] == 32
    assert geometry["exposure_time_s"] == 0.1
    assert geometry["beam_center_y_px"] is None
    assert geometry["detector"] == "PILATUS3 6M"
