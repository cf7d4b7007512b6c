"""The HTTP gateway through the real chain: sessions, every endpoint, errors, security."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import simplejpeg
from chain import IS_ROOT, wait_for
from world import HttpReply, WebWorld

from imageserver.analysis import AnalysisParams, analyse_file
from imageserver.formats import read_meta

needs_root = pytest.mark.skipif(not IS_ROOT, reason="real ESAF groups need root")


def cookie_of(reply_headers: dict[str, str]) -> str:
    return reply_headers["set-cookie"].split(";", 1)[0]


# -- sessions ----------------------------------------------------------------------------------


def test_login_sets_an_httponly_strict_cookie_and_drops_the_token_from_the_url(
    web_world: WebWorld,
) -> None:
    reply = web_world.get("/login", {"session": web_world.token, "next": "/?frame=2"})
    assert reply.status == 303
    assert reply.headers["location"] == "/?frame=2"
    cookie = reply.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "secure" not in cookie.lower().replace("samesite", "")  # plain http here
    assert web_world.token not in reply.headers["location"]
    whoami = web_world.get("/api/v1/whoami", cookie=cookie_of(reply.headers))
    assert whoami.status == 200
    assert whoami.json()["login"] == web_world.user


def test_login_never_redirects_to_another_site(web_world: WebWorld) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "relative"):
        reply = web_world.get("/login", {"session": web_world.token, "next": target})
        assert reply.status == 303
        assert reply.headers["location"] == "/"


def test_a_bad_login_link_says_so_and_sets_no_cookie(web_world: WebWorld) -> None:
    for session in ("not-a-session", ""):
        reply = web_world.get("/login", {"session": session})
        assert reply.status == 401
        assert "set-cookie" not in reply.headers
        assert b"not" in reply.body.lower() and b"<script" not in reply.body


def test_bearer_token_and_no_session(web_world: WebWorld) -> None:
    who = web_world.api("whoami")
    assert who.status == 200
    assert who.json() == {
        "login": web_world.user,
        "esafs": [web_world.esaf] if web_world.esaf else [],
    }
    anonymous = web_world.get("/api/v1/whoami")
    assert anonymous.status == 401
    assert anonymous.error_code == "session_invalid"
    forged = web_world.api("whoami", token="f" * 32)
    assert forged.status == 401
    assert forged.error_code == "session_invalid"


def test_the_token_never_reaches_a_log(web_world: WebWorld) -> None:
    web_world.get("/login", {"session": web_world.token})
    web_world.api("meta", path=str(web_world.master))
    web_world.api("image", path=str(web_world.data / "missing.cbf"))
    for role in ("web", "serve", "proxy"):
        text = (web_world.chain.directory / f"{role}.log").read_text(errors="replace")
        assert web_world.token not in text, role

    def web_log() -> str:
        return (web_world.chain.directory / "web.log").read_text()

    # The access line is written once the response is out: wait for it, then read all.
    wait_for(lambda: "GET /api/v1/image?" in web_log(), timeout_s=5, what="the access line")
    assert "login: session " in web_log()
    assert " 404 " in web_log()  # failures are logged
    assert web_world.token not in web_log()


@needs_root
def test_an_esaf_the_session_may_not_see_is_forbidden(web_world: WebWorld) -> None:
    reply = web_world.api("meta", token=web_world.other_token, path=str(web_world.master))
    assert reply.status == 403
    assert reply.error_code == "esaf_not_allowed"


# -- endpoints ---------------------------------------------------------------------------------


def test_meta_in_si_units(web_world: WebWorld) -> None:
    reply = web_world.api("meta", path=str(web_world.master), frame=2)
    assert reply.status == 200
    meta = reply.json()
    expected = read_meta(web_world.master)
    assert meta["frame"] == 2
    assert (meta["first_frame"], meta["last_frame"]) == (1, expected.last_frame)
    assert (meta["width_px"], meta["height_px"]) == (expected.width_px, expected.height_px)
    assert meta["beam_center_x_px"] == pytest.approx(expected.beam_center_x_px)
    assert meta["distance_m"] == pytest.approx(expected.distance_m)
    assert meta["wavelength_m"] == pytest.approx(expected.wavelength_a * 1e-10)
    assert meta["pixel_size_x_m"] == pytest.approx(expected.pixel_size_x_m)
    assert meta["exposure_time_s"] is not None and meta["exposure_time_s"] > 0
    assert meta["detector"]


def test_image_jpeg_with_view_headers(web_world: WebWorld) -> None:
    reply = web_world.api("image", path=str(web_world.cbf), frame=1, size=256)
    assert reply.status == 200, reply.body[:200]
    assert reply.headers["content-type"] == "image/jpeg"
    height, width, _, _ = simplejpeg.decode_jpeg_header(reply.body)
    assert width == 256
    meta = read_meta(web_world.cbf)
    assert height == round(256 * meta.height_px / meta.width_px)
    black, white = int(reply.headers["x-level-black"]), int(reply.headers["x-level-white"])
    assert black > white >= 0
    assert reply.headers["x-frame"] == "1"
    assert reply.headers["x-last-frame"] == str(meta.last_frame)
    assert float(reply.headers["x-view-max"]) >= float(reply.headers["x-view-mean"])


def test_explicit_levels_and_colormap_change_the_pixels(web_world: WebWorld) -> None:
    common = {"path": str(web_world.master), "size": 128}
    grey = web_world.api("image", **common, black=50, white=0)
    heat = web_world.api("image", **common, black=50, white=0, colormap="heat")
    darker = web_world.api("image", **common, black=5, white=0)
    assert (grey.headers["x-level-black"], grey.headers["x-level-white"]) == ("50", "0")
    pixels = [simplejpeg.decode_jpeg(r.body).astype(int) for r in (grey, heat, darker)]
    assert np.abs(pixels[0] - pixels[1]).mean() > 5
    assert pixels[2].mean() < pixels[0].mean()


def test_a_zoomed_tile_is_a_different_part_of_the_frame(web_world: WebWorld) -> None:
    common = {"path": str(web_world.cbf), "size": 128, "zoom": 4, "black": 100, "white": 0}
    first = web_world.api("image", **common, x=1, y=1)
    second = web_world.api("image", **common, x=2, y=1)
    assert first.status == second.status == 200
    assert first.body != second.body


def test_png_format(web_world: WebWorld) -> None:
    reply = web_world.api("image", path=str(web_world.cbf), size=64, format="png")
    assert reply.status == 200
    assert reply.headers["content-type"] == "image/png"
    assert reply.body.startswith(b"\x89PNG")


def test_spots(web_world: WebWorld) -> None:
    reply = web_world.api("spots", path=str(web_world.cbf))
    assert reply.status == 200
    assert isinstance(reply.json()["spots"], int)


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"path": "/no/such/file.cbf"}, 404, "file_missing"),
        ({"frame": 99}, 422, "frame_out_of_range"),
        ({"size": "abc"}, 400, "bad_request"),
        ({"size": 100000}, 400, "bad_request"),
        ({"colormap": "rainbow"}, 400, "bad_request"),
        ({"format": "gif"}, 400, "bad_request"),
        ({"zoom": 0.5}, 400, "bad_request"),
        ({"esaf": -1}, 400, "bad_request"),
    ],
)
def test_image_errors_are_json_with_their_status(
    web_world: WebWorld, params: dict[str, object], status: int, code: str
) -> None:
    reply = web_world.api("image", **{"path": str(web_world.master), **params})
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"] == "application/json"
    assert reply.error_code == code
    assert reply.json()["error"]["message"]


def test_a_file_the_user_cannot_read_is_forbidden(web_world: WebWorld, tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("needs another owner than the test user")
    secret = web_world.data / "secret_0001.cbf"
    secret.write_bytes(web_world.cbf.read_bytes())
    secret.chmod(0o600)  # root's, not the ESAF group's
    try:
        reply = web_world.api("image", path=str(secret), size=64)
        assert reply.status == 403
        assert reply.error_code == "permission_denied"
    finally:
        secret.unlink()


def test_unknown_endpoint_and_method(web_world: WebWorld) -> None:
    assert web_world.get("/api/v1/nothing", token=web_world.token).status == 404
    assert web_world.get("/api/v1/whoami", method="POST", token=web_world.token).status == 405


# -- security headers --------------------------------------------------------------------------


def test_security_headers_and_no_cors(web_world: WebWorld) -> None:
    for path in ("/", "/api/v1/whoami", "/openapi.json"):
        reply = web_world.get(path, token=web_world.token, headers={"Origin": "https://x.example"})
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert not any(name.startswith("access-control-") for name in reply.headers)


def test_openapi_lists_the_endpoints(web_world: WebWorld) -> None:
    reply = web_world.get("/openapi.json")
    assert reply.status == 200
    paths = reply.json()["paths"]
    for endpoint in ("whoami", "files", "meta", "image", "spots", "latest"):
        assert f"/api/v1/{endpoint}" in paths


# -- load --------------------------------------------------------------------------------------


def test_sixteen_tiles_at_once_with_invalid_requests_among_them(web_world: WebWorld) -> None:
    """Each request gets its own answer: valid tiles images, invalid ones their errors."""
    path = str(web_world.master)
    requests = [
        {"path": path, "frame": 2, "size": 64, "zoom": 4, "x": col, "y": row}
        for row in range(4)
        for col in range(4)
    ]
    requests += [{"path": path, "frame": 77}, {"path": "/missing.h5"}, {"path": path, "size": -3}]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(lambda params: web_world.api("image", **params), requests))
    tiles, errors = replies[:16], replies[16:]
    assert all(reply.status == 200 for reply in tiles)
    assert len({reply.body for reply in tiles}) > 8
    assert [reply.status for reply in errors] == [422, 404, 400]


def test_the_gateway_survives_the_chain_going_away(web_world: WebWorld) -> None:
    """No proxy: a clear 503 at once; the proxy back: served again."""
    proxy = web_world.chain.processes["proxy"]
    proxy.terminate()
    proxy.wait(10)
    try:
        reply = web_world.api("whoami")
        assert reply.status == 503  # at once: nothing to wait for
        assert re.search("reach|answer", reply.json()["error"]["message"])
        assert reply.headers["retry-after"] == "1"
    finally:
        web_world.chain.restart_proxy()
    wait_for(lambda: web_world.api("whoami").status == 200, timeout_s=20, what="the proxy back")


# -- listings ----------------------------------------------------------------------------------


def test_files_lists_datasets_as_the_user_sees_them(web_world: WebWorld) -> None:
    reply = web_world.api("files", dir=str(web_world.data))
    assert reply.status == 200, reply.body[:300]
    listing = reply.json()
    assert listing["dir"] == str(web_world.data)
    by_path = {entry["path"]: entry for entry in listing["datasets"]}
    master = by_path[str(web_world.master)]
    assert master["kind"] == "eiger"
    assert (master["first_frame"], master["last_frame"]) == (
        1,
        read_meta(web_world.master).last_frame,
    )
    assert not any("_data_" in path for path in by_path)
    cbf = by_path[str(web_world.cbf)]
    assert cbf["template"] == str(web_world.cbf).replace("0001", "####")
    assert listing["truncated"] is False


def test_latest_names_the_newest_dataset(web_world: WebWorld) -> None:
    newest = web_world.data / "pilatus6m_0002.cbf"
    newest.write_bytes(web_world.cbf.read_bytes())
    os.chown(newest, os.getuid() if not IS_ROOT else 0, web_world.data.stat().st_gid)
    newest.chmod(0o640)
    try:
        reply = web_world.api("latest", dir=str(web_world.data))
        assert reply.status == 200
        latest = reply.json()
        assert latest["frame"] == 2
        assert latest["dataset"]["template"] == str(web_world.cbf).replace("0001", "####")
    finally:
        newest.unlink()


def test_listing_errors(web_world: WebWorld) -> None:
    missing = web_world.api("files", dir=str(web_world.data / "nothing"))
    assert (missing.status, missing.error_code) == (404, "file_missing")
    assert web_world.api("files").status == 400  # dir is required
    if IS_ROOT:
        closed = web_world.data.parent / "closed"
        closed.mkdir(mode=0o700, exist_ok=True)  # root's own
        try:
            denied = web_world.api("files", dir=str(closed))
            assert (denied.status, denied.error_code) == (403, "permission_denied")
        finally:
            closed.rmdir()


def test_analysis_through_the_gateway(web_world: WebWorld) -> None:
    reply = web_world.api("analysis", path=str(web_world.cbf), d_max=40)
    assert reply.status == 200, reply.body[:300]
    result = reply.json()
    expected = analyse_file(web_world.cbf, 1, AnalysisParams(d_max=40)).to_json()
    assert result["n_spots_total"] == expected["n_spots_total"]
    assert len(result["spots"]) == expected["n_spots_total"]
    assert set(result["spots"][0]) == {"x", "y", "intensity", "size_px", "d_a"}
    bad = web_world.api("analysis", path=str(web_world.cbf), algorithm="xds")
    assert (bad.status, bad.error_code) == (400, "bad_request")


# -- index jobs --------------------------------------------------------------------------------


def post_json(web_world: WebWorld, path: str, body: object, token: str | None = None) -> HttpReply:
    parts = urlsplit(web_world.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("POST", path, body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        return HttpReply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def test_an_index_job_is_started_and_followed_by_the_sessions_of_its_esaf(
    web_world: WebWorld,
) -> None:
    body = {"esaf": web_world.esaf, "path": str(web_world.data / "gone_0001.cbf")}
    started = post_json(web_world, "/api/v1/jobs/index", body, web_world.token)
    assert started.status == 202, started.body
    job = started.json()
    assert job["state"] == "starting" and job["inputs"] == {"fn1": body["path"]}
    assert job["id"].startswith(f"{web_world.esaf}-")

    def finished() -> dict[str, object] | None:
        reply = web_world.get(f"/api/v1/jobs/{job['id']}", token=web_world.token)
        assert reply.status == 200, reply.body
        document = reply.json()
        return document if document["state"] not in ("starting", "running") else None

    done = wait_for(finished, timeout_s=30, what="the job to end")
    assert done["state"] == "failed"
    assert done["error"]["code"] == "file_missing"
    assert done["login"] == web_world.user and done["inputs"] == {"files": [body["path"]]}
    # A new gateway knows it too: the record is the worker's, in the ESAF's Redis.
    web_world.chain.restart("web")
    again = web_world.get(f"/api/v1/jobs/{job['id']}", token=web_world.token).json()
    assert again["state"] == "failed" and again["id"] == job["id"]
    if IS_ROOT:  # a session without the job's ESAF is refused that ESAF
        unseen = web_world.get(f"/api/v1/jobs/{job['id']}", token=web_world.other_token)
        assert (unseen.status, unseen.error_code) == (403, "esaf_not_allowed")
    nothing = web_world.get("/api/v1/jobs/nothing", token=web_world.token)
    assert (nothing.status, nothing.error_code) == (404, "job_unknown")
    unknown = web_world.get(f"/api/v1/jobs/{web_world.esaf}-{'0' * 16}", token=web_world.token)
    assert (unknown.status, unknown.error_code) == (404, "job_unknown")


def test_index_job_requests_are_checked(web_world: WebWorld) -> None:
    assert post_json(web_world, "/api/v1/jobs/index", {"path": "/x"}).status == 401
    extra = post_json(web_world, "/api/v1/jobs/index", {"path": "/x", "rm": 1}, web_world.token)
    assert (extra.status, extra.error_code) == (400, "bad_request")
    empty = post_json(web_world, "/api/v1/jobs/index", {}, web_world.token)
    assert (empty.status, empty.error_code) == (400, "bad_request")
    by_get = web_world.get("/api/v1/jobs/index", token=web_world.token)
    assert by_get.status == 404  # no job has that id; starting one takes a POST
