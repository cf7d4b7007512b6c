"""The browser viewer in chromium (Playwright) against the real gateway and chain.

Every test gets a fresh browser context (no cookie), logs in with a link as a user would,
and fails on any console error or uncaught page error but the HTTP errors it expects.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from world import RUN_FRAMES, SERIES_FRAMES, WebWorld

from imageserver.sampledata.dataset import PILATUS_CBF
from imageserver.service.auth import connect_session_store

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"chromium not found ({CHROMIUM}): scripts/test installs it", allow_module_level=True
    )

IMAGE = "[data-testid=viewer-image]"
READY = f"{IMAGE}[data-state=ready]"
TIMEOUT_MS = 15_000
LOAD_FAILED = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
SESSION_MESSAGE = "Your session has expired or is not valid; log in again"
CANVAS_HASH = """(selector) => {
  const canvas = document.querySelector(selector);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let h = 2166136261;
  let painted = 0;
  for (let i = 0; i < data.length; i += 4) {
    const rgba = data[i] ^ (data[i + 1] << 8) ^ (data[i + 2] << 16) ^ (data[i + 3] << 24);
    h = Math.imul(h ^ rgba, 16777619);
    if (data[i + 3]) painted++;
  }
  return {hash: h >>> 0, painted};
}"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except sync_api.Error as exc:
            pytest.skip(f"chromium ({CHROMIUM}) cannot be launched: {exc.message.splitlines()[0]}")
        yield browser
        browser.close()


@dataclass
class Viewer:
    """One page of the viewer and what its console said."""

    page: Any
    world: WebWorld
    problems: list[str] = field(default_factory=list)
    expected_http: set[tuple[int, str]] = field(default_factory=set)
    """(status, API path) pairs whose failed loads the browser may log as console errors."""

    def on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        status = LOAD_FAILED.match(message.text)
        url = message.location.get("url", "")
        if status and (int(status.group(1)), urlsplit(url).path) in self.expected_http:
            return
        self.problems.append(f"console error: {message.text} ({url})")

    def expect_http_error(self, status: int, *endpoints: str) -> None:
        self.expected_http.update((status, f"/api/v1/{endpoint}") for endpoint in endpoints)

    def login(self, next_path: str = "/", token: str | None = None) -> None:
        self.page.goto(self.world.chain.login_url(token or self.world.token, next_path))

    def open(self, path: Path | str, frame: int = 1) -> None:
        """Log in straight to a deep link of a dataset and wait for its picture."""
        self.login("/?" + urlencode({"esaf": self.world.esaf, "path": str(path), "frame": frame}))
        self.wait_frame(frame)

    def open_dir(self, directory: Path) -> None:
        self.login("/?" + urlencode({"esaf": self.world.esaf, "dir": str(directory)}))
        self.page.wait_for_selector("[data-testid=dataset-browser][data-state=ready]")

    def wait_frame(self, frame: int, *, raw: bool = False) -> None:
        """Until the canvas shows ``frame`` (the contrast in the page when ``raw``)."""
        render = "[data-render=raw]" if raw else ""
        self.page.wait_for_selector(f'{READY}[data-frame="{frame}"]{render}')

    def image(self) -> dict[str, str]:
        return dict(self.page.eval_on_selector(IMAGE, "e => ({...e.dataset})"))

    def pixels(self, selector: str = IMAGE) -> dict[str, int]:
        return dict(self.page.evaluate(CANVAS_HASH, selector))

    def pixels_change(self, before: dict[str, int], selector: str = IMAGE) -> dict[str, int]:
        """Wait until the canvas no longer holds ``before``'s pixels (it paints on a frame)."""
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            now = self.pixels(selector)
            if now["hash"] != before["hash"]:
                return now
            self.page.wait_for_timeout(30)
        raise AssertionError(f"the pixels of {selector} did not change")

    def settled(self) -> None:
        """Wait for the prefetches to end (no request for half a second)."""
        self.page.wait_for_load_state("networkidle")

    def text(self, testid: str) -> str:
        return str(self.page.text_content(f"[data-testid={testid}]") or "").strip()

    def error_shown(self) -> str:
        error = self.page.wait_for_selector("[data-testid=error-message]:not([hidden])")
        return str(error.text_content() or "").strip()


@pytest.fixture
def viewer(viewer_world: WebWorld, chromium: Any) -> Iterator[Viewer]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    shown = Viewer(page, viewer_world)
    page.on("console", shown.on_console)
    page.on("pageerror", lambda error: shown.problems.append(f"page error: {error}"))
    try:
        yield shown
        page.wait_for_timeout(100)  # what the last action logs
        assert not shown.problems, "\n".join(shown.problems)
    finally:
        context.close()


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# -- logging in and showing a frame ------------------------------------------------------------


def test_a_login_link_opens_the_viewer_on_the_image_without_the_token(viewer: Viewer) -> None:
    world = viewer.world
    viewer.open(world.series, frame=1)
    assert world.token not in viewer.page.url
    assert urlsplit(viewer.page.url).path == "/"
    assert query_of(viewer.page.url)["path"] == [str(world.series)]
    assert viewer.image()["path"] == str(world.series)
    assert viewer.pixels()["painted"] > 100_000  # a picture, not an empty canvas
    assert viewer.page.is_hidden("[data-testid=error-message]")
    assert viewer.text("frame-range") == f"1–{SERIES_FRAMES}"
    assert viewer.text("login") == f"as {world.user}"


def test_the_arrow_key_and_the_frame_number_change_the_frame(viewer: Viewer) -> None:
    viewer.open(viewer.world.series, frame=1)
    first = viewer.pixels()
    viewer.page.keyboard.press("ArrowRight")
    viewer.wait_frame(2)
    second = viewer.pixels_change(first)
    assert query_of(viewer.page.url)["frame"] == ["2"]

    viewer.page.fill("[data-testid=frame-number]", "5")
    viewer.page.press("[data-testid=frame-number]", "Enter")
    viewer.wait_frame(5)
    fifth = viewer.pixels_change(second)
    assert fifth["hash"] != first["hash"]
    assert query_of(viewer.page.url)["frame"] == ["5"]
    assert viewer.page.input_value("[data-testid=frame-slider]") == "5"


# -- contrast, colours, zoom, readout, overlays ------------------------------------------------


def test_levels_repaint_in_the_page_without_asking_for_an_image(viewer: Viewer) -> None:
    viewer.open(viewer.world.series, frame=1)
    viewer.wait_frame(1, raw=True)
    viewer.settled()
    before = viewer.pixels()
    asked: list[str] = []
    viewer.page.on("request", lambda r: asked.append(r.url) if "/api/v1/image" in r.url else None)
    viewer.page.fill("[data-testid=contrast-black]", "40")
    viewer.page.fill("[data-testid=contrast-white]", "5")
    viewer.pixels_change(before)
    viewer.page.wait_for_timeout(400)  # longer than the server repaint's debounce
    assert asked == []
    assert (viewer.image()["black"], viewer.image()["white"]) == ("40", "5")
    assert query_of(viewer.page.url)["black"] == ["40"]
    assert viewer.page.get_attribute("[data-testid=contrast-auto]", "aria-pressed") == "false"


def test_a_colour_map_repaints(viewer: Viewer) -> None:
    viewer.open(viewer.world.series, frame=1)
    viewer.wait_frame(1, raw=True)
    grey = viewer.pixels()
    viewer.page.select_option("[data-testid=colormap]", "heat")
    heat = viewer.pixels_change(grey)
    viewer.page.select_option("[data-testid=colormap]", "viridis")
    viewer.pixels_change(heat)
    assert viewer.image()["colormap"] == "viridis"
    assert query_of(viewer.page.url)["colormap"] == ["viridis"]


def test_zoom_fetches_tiles_and_fit_returns(viewer: Viewer) -> None:
    viewer.open(viewer.world.series, frame=1)
    viewer.wait_frame(1, raw=True)
    fitted = viewer.pixels()

    def is_tile(request: Any) -> bool:
        if "/api/v1/image" not in request.url:
            return False
        return float(query_of(request.url).get("zoom", ["1"])[0]) > 1

    with viewer.page.expect_response(is_tile) as tile:
        viewer.page.click("[data-testid=zoom-in]")
    assert tile.value.status == 200
    zoomed = viewer.pixels_change(fitted)
    assert float(viewer.image()["zoom"]) == pytest.approx(2)
    assert viewer.text("zoom-level") == "×2.0"
    viewer.settled()
    viewer.page.click("[data-testid=zoom-fit]")
    viewer.page.wait_for_selector(f'{IMAGE}[data-zoom="1.00"]')
    viewer.pixels_change(zoomed)
    viewer.page.wait_for_timeout(100)
    assert viewer.pixels() == fitted  # the whole detector as before, tiles or not
    assert viewer.text("zoom-level") == "×1.0"


def test_the_readout_under_the_mouse(viewer: Viewer) -> None:
    viewer.open(viewer.world.series, frame=1)
    viewer.wait_frame(1, raw=True)
    box = viewer.page.locator(IMAGE).bounding_box()
    assert box is not None
    viewer.page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
    viewer.page.wait_for_function(
        "() => document.querySelector('[data-testid=readout-value]').textContent !== '–'"
    )
    value = viewer.text("readout-value")
    assert re.fullmatch(r"\d+|masked|overload", value), value
    resolution = viewer.text("readout-resolution")
    assert re.fullmatch(r"\d+\.\d\d", resolution), resolution
    assert 0.5 < float(resolution) < 100
    assert re.fullmatch(r"\d+", viewer.text("readout-x"))


def test_resolution_rings_are_drawn(viewer: Viewer) -> None:
    viewer.open(viewer.world.series, frame=1)
    viewer.page.wait_for_selector("[data-testid=dataset-info] dt:text-is('Wavelength')")
    viewer.page.wait_for_timeout(100)  # the geometry reaches the overlay on the next frame
    without = viewer.pixels("#overlay")
    viewer.page.check("[data-testid=rings-toggle]")
    with_rings = viewer.pixels_change(without, "#overlay")
    assert with_rings["painted"] > without["painted"] + 1000
    viewer.page.uncheck("[data-testid=rings-toggle]")
    viewer.pixels_change(with_rings, "#overlay")


# -- spot finding ------------------------------------------------------------------------------

SUMMARY = "[data-testid=analysis-summary]"
SPOT_GREEN = """({points}) => {
  const ctx = document.querySelector('#overlay').getContext('2d');
  return points.filter(([x, y]) => {
    const d = ctx.getImageData(Math.round(x) - 1, Math.round(y) - 1, 3, 3).data;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 1] > 180 && d[i] < 150 && d[i + 2] < 180 && d[i + 3] > 200) return true;
    }
    return false;
  }).length;
}"""


def analysis_requests(viewer: Viewer) -> list[dict[str, list[str]]]:
    """The queries of the page's /api/v1/analysis requests from now on, as they are sent."""
    sent: list[dict[str, list[str]]] = []
    viewer.page.on(
        "request",
        lambda r: sent.append(query_of(r.url)) if "/api/v1/analysis" in r.url else None,
    )
    return sent


def page_json(viewer: Viewer, endpoint: str, **params: Any) -> Any:
    """An API answer through the page's own fetch (its session cookie)."""
    query = urlencode({"esaf": viewer.world.esaf, **params})
    script = "url => fetch(url).then(r => r.json())"
    return viewer.page.evaluate(script, f"/api/v1/{endpoint}?{query}")


def wait_summary(viewer: Viewer, frame: int) -> None:
    viewer.page.wait_for_selector(f'{SUMMARY}[data-state=ready][data-frame="{frame}"]')


def spot_circle_points(viewer: Viewer, spot: dict[str, Any], zoom: float) -> list[list[float]]:
    """Where the circle of ``spot`` crosses its row and column on the overlay (CSS px), with
    the view zoomed about the detector's centre: the view.js mapping, with pixel centres at
    integers in the API and at i + 0.5 in the view."""
    meta = page_json(viewer, "meta", path=str(viewer.world.series), frame=1)
    width, height = meta["width_px"], meta["height_px"]
    stage = viewer.page.locator("#stage").bounding_box()
    assert stage is not None
    css_w, css_h = round(stage["width"]), round(stage["height"])
    scale = min(css_w / width, css_h / height) * zoom
    sx = (spot["x"] + 0.5 - width / 2) * scale + css_w / 2
    sy = (spot["y"] + 0.5 - height / 2) * scale + css_h / 2
    r = max(4.0, ((spot["size_px"] / 3.141592653589793) ** 0.5 + 1.5) * scale)
    return [[sx + r, sy], [sx - r, sy], [sx, sy + r], [sx, sy - r]]


def central_spot(analysis: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    return min(analysis["spots"], key=lambda s: abs(s["x"] - width / 2) + abs(s["y"] - height / 2))


def test_spots_are_found_and_drawn_where_they_are(viewer: Viewer) -> None:
    series = viewer.world.series
    viewer.open(series, frame=1)
    viewer.wait_frame(1, raw=True)
    viewer.settled()
    assert viewer.page.get_attribute(SUMMARY, "data-state") == "off"
    without = viewer.pixels("#overlay")
    sent = analysis_requests(viewer)
    viewer.page.check("[data-testid=spots-toggle]")
    wait_summary(viewer, 1)
    assert [(q["path"], q["frame"]) for q in sent] == [([str(series)], ["1"])]
    with_spots = viewer.pixels_change(without, "#overlay")
    assert with_spots["painted"] > without["painted"] + 500

    expected = page_json(viewer, "analysis", path=str(series), frame=1)
    assert expected["n_spots_total"] > 10
    summary = f"{SUMMARY} [data-field=n_spots_total]"
    assert viewer.page.text_content(summary) == str(expected["n_spots_total"])
    assert viewer.page.get_attribute("#overlay", "data-spots") == str(len(expected["spots"]))
    assert viewer.page.is_hidden("[data-testid=error-message]")

    # The circle round a spot near the middle, at fit and zoomed in (the middle stays put).
    meta = page_json(viewer, "meta", path=str(series), frame=1)
    spot = central_spot(expected, meta["width_px"], meta["height_px"])
    points = spot_circle_points(viewer, spot, zoom=1)
    assert viewer.page.evaluate(SPOT_GREEN, {"points": points}) >= 3
    viewer.page.click("[data-testid=zoom-in]")
    viewer.page.wait_for_selector(f'{IMAGE}[data-zoom="2.00"]')
    viewer.page.wait_for_timeout(100)  # the overlay repaints on the next frame
    points = spot_circle_points(viewer, spot, zoom=2)
    assert viewer.page.evaluate(SPOT_GREEN, {"points": points}) >= 3

    viewer.page.uncheck("[data-testid=spots-toggle]")
    viewer.page.wait_for_selector(f"{SUMMARY}[data-state=off]")
    assert viewer.page.get_attribute("#overlay", "data-spots") == "0"


def test_a_new_frame_with_spots_on_asks_for_its_analysis_one_at_a_time(viewer: Viewer) -> None:
    viewer.open(viewer.world.series, frame=1)
    viewer.page.check("[data-testid=spots-toggle]")
    wait_summary(viewer, 1)
    first = viewer.pixels("#overlay")
    in_flight = [0, 0]  # now, most

    def started(request: Any) -> None:
        if "/api/v1/analysis" in request.url:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)

    def ended(request: Any) -> None:
        if "/api/v1/analysis" in request.url:
            in_flight[0] -= 1

    viewer.page.on("request", started)
    viewer.page.on("requestfinished", ended)
    viewer.page.on("requestfailed", ended)
    sent = analysis_requests(viewer)
    viewer.page.keyboard.press("ArrowRight")
    viewer.wait_frame(2)
    wait_summary(viewer, 2)
    assert ["2"] in [q["frame"] for q in sent]
    viewer.pixels_change(first, "#overlay")
    for _ in range(3):  # faster than the analyses: the ones flicked past are cancelled
        viewer.page.keyboard.press("ArrowRight")
    viewer.wait_frame(5)
    wait_summary(viewer, 5)
    assert sent[-1]["frame"] == ["5"]
    assert in_flight[1] == 1
    expected = page_json(viewer, "analysis", path=str(viewer.world.series), frame=5)
    summary = f"{SUMMARY} [data-field=n_spots_total]"
    assert viewer.page.text_content(summary) == str(expected["n_spots_total"])

    # Playing asks for none (each would be cancelled by the next frame); pausing asks again.
    viewer.page.click("[data-testid=play-toggle]")
    viewer.page.wait_for_selector(f"{SUMMARY}[data-state=playing]")
    viewer.page.click("[data-testid=play-toggle]")
    viewer.page.wait_for_selector(READY)  # the frame it stopped on
    shown = int(viewer.image()["frame"])
    wait_summary(viewer, shown)
    assert in_flight[1] == 1


def test_a_failed_analysis_is_said_in_the_panel_not_the_banner(viewer: Viewer) -> None:
    viewer.expect_http_error(422, "analysis")
    message = "This file does not give the detector distance"
    body = {"error": {"code": "missing_metadata", "message": message}}
    viewer.page.route(
        "**/api/v1/analysis?*",
        lambda route: route.fulfill(status=422, json=body),
    )
    viewer.open(viewer.world.series, frame=1)
    viewer.page.check("[data-testid=spots-toggle]")
    viewer.page.wait_for_selector(f"{SUMMARY}[data-state=error]")
    assert message in viewer.text("analysis-summary")
    assert viewer.page.is_hidden("[data-testid=error-message]")
    assert viewer.page.get_attribute("#overlay", "data-spots") in (None, "0")


# -- following a run, the dataset browser ------------------------------------------------------


def test_follow_latest_shows_a_frame_written_during_the_run(viewer: Viewer) -> None:
    world = viewer.world
    live = world.data / f"live{os.urandom(3).hex()}"  # left for the world's clean-up
    for n in (1, 2):
        world.place(world.data / f"run_{n:05d}.cbf", live / f"live_{n:05d}.cbf")
    viewer.open(live / "live_#####.cbf", frame=1)
    viewer.page.check("[data-testid=follow-toggle]")
    viewer.wait_frame(2)  # the newest frame already there
    world.place(world.data / "run_00003.cbf", live / "live_00003.cbf")
    started = time.monotonic()
    viewer.wait_frame(3)
    assert time.monotonic() - started < 5
    assert viewer.image()["path"] == str(live / "live_00003.cbf")
    assert viewer.text("frame-range") == "1–3"
    assert viewer.page.is_checked("[data-testid=follow-toggle]")


def test_the_browser_lists_datasets_and_opens_a_run(viewer: Viewer) -> None:
    world = viewer.world
    assert world.run is not None
    viewer.open_dir(world.data)
    entries = viewer.page.eval_on_selector_all(
        "[data-testid=dataset-browser] [data-kind=dataset]",
        "bs => bs.map(b => ({path: b.dataset.path, template: b.dataset.template || null,"
        " text: b.textContent}))",
    )
    paths = [entry["path"] for entry in entries]
    assert paths.count(str(world.master)) == 1
    assert paths.count(str(world.series)) == 1
    assert not any("_data_" in path for path in paths)
    runs = [entry for entry in entries if entry["template"] == str(world.run)]
    assert len(runs) == 1, entries
    assert runs[0]["path"] == str(world.data / "run_00001.cbf")
    assert f"{RUN_FRAMES} frames" in runs[0]["text"]
    assert not any(re.search(r"run_\d+\.cbf$", path) for path in paths if path != runs[0]["path"])
    assert str(world.data / PILATUS_CBF) in paths

    viewer.page.click(f'[data-kind=dataset][data-template="{world.run}"]')
    viewer.wait_frame(1)
    assert viewer.image()["path"] == str(world.data / "run_00001.cbf")
    assert query_of(viewer.page.url)["path"] == [str(world.run)]
    assert viewer.text("frame-range") == f"1–{RUN_FRAMES}"
    viewer.page.keyboard.press("End")
    viewer.wait_frame(RUN_FRAMES)
    assert viewer.image()["path"] == str(world.data / f"run_{RUN_FRAMES:05d}.cbf")


# -- errors in words ---------------------------------------------------------------------------


def assert_no_picture(viewer: Viewer) -> None:
    assert viewer.image()["state"] in ("error", "empty")
    assert viewer.pixels()["painted"] == 0


def test_a_missing_file_says_so(viewer: Viewer) -> None:
    viewer.expect_http_error(404, "image", "meta", "files")
    viewer.login("/?" + urlencode({"esaf": viewer.world.esaf, "path": "/no/such.cbf", "frame": 1}))
    message = viewer.error_shown()
    assert re.search(r"no such|not found|does not exist|missing", message, re.IGNORECASE), message
    viewer.page.wait_for_selector(f"{IMAGE}[data-state=error]")
    assert_no_picture(viewer)


def test_a_bogus_session_cookie_asks_to_log_in_again(viewer: Viewer) -> None:
    viewer.expect_http_error(401, "whoami", "files", "image", "meta")
    viewer.page.context.add_cookies(
        [{"name": "imageserver_session", "value": "f" * 32, "url": viewer.world.url}]
    )
    viewer.page.goto(viewer.world.url + "/?" + urlencode({"path": str(viewer.world.series)}))
    assert viewer.error_shown() == SESSION_MESSAGE
    assert_no_picture(viewer)


def test_a_session_deleted_after_login_asks_to_log_in_again(viewer: Viewer) -> None:
    world = viewer.world
    token = world.chain.session(world.user, [world.esaf] if world.esaf else [])
    deep_link = "/?" + urlencode({"esaf": world.esaf, "path": str(world.series), "frame": 1})
    viewer.login(deep_link, token)
    viewer.wait_frame(1, raw=True)
    viewer.settled()
    connect_session_store(world.chain.settings).delete(token)
    viewer.expect_http_error(401, "image", "meta", "files", "whoami", "latest")
    viewer.page.fill("[data-testid=frame-number]", "4")  # never prefetched
    viewer.page.press("[data-testid=frame-number]", "Enter")
    assert viewer.error_shown() == SESSION_MESSAGE
    viewer.page.reload()
    assert viewer.error_shown() == SESSION_MESSAGE
    assert_no_picture(viewer)


# -- the API page ------------------------------------------------------------------------------


def test_the_docs_page_lists_the_endpoints(viewer: Viewer) -> None:
    viewer.page.goto(viewer.world.url + "/docs")
    viewer.page.wait_for_selector("[data-testid=docs-endpoints] section.endpoint")
    shown = viewer.page.eval_on_selector_all(
        "section.endpoint", "ss => ss.map(s => s.dataset.method + ' ' + s.dataset.path)"
    )
    for endpoint in ("whoami", "files", "latest", "meta", "image", "spots", "analysis"):
        assert f"get /api/v1/{endpoint}" in shown
    assert "format" in (viewer.page.text_content("[data-path='/api/v1/image']") or "")
    assert viewer.page.is_hidden("[data-testid=error-message]")
