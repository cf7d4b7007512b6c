"""The browser viewer in chromium on the 16M series, timed in the page (Performance API).

Each sample runs in the page: ``performance.now()`` just before the key (or the frame
number) is dispatched, and again on the first animation frame after a MutationObserver has
seen the image canvas report that frame with ``data-state=ready`` (the canvas is drawn on
that animation frame, before this one). The service runs as in production: proxy, manager,
per-user workers and the HTTP gateway, with a fresh Redis; the browser is Debian's chromium.

- cold: a frame never requested (nor prefetched) by anyone, chosen in the frame box;
- prefetched: the next frame (→) after the viewer had time to prefetch it;
- scrubbing: → through 30 frames, each as soon as the previous one is painted, as a new
  user in a new browser with the shared cache emptied (nothing viewed before).

``--screenshots DIR`` writes the README's pictures instead (viewer.png, viewer-zoom.png).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis
from playwright.sync_api import Page, sync_playwright

from chain_common import BENCH_ESAF, N_FRAMES, BenchUsers, write_series_once
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService
from run import machine_line

IDENTITY = '[identity]\nesaf_group_pattern = "isbenchesaf{esaf}"\n'
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 900}
IMAGE = "[data-testid=viewer-image]"
SCRUB_FRAMES = 30

# One sample: dispatch, then wait for the canvas to report `target` ready, then one more
# animation frame (the view draws on the animation frame after the state changes).
TIMED_STEP = """async ([how, target]) => {
  const img = document.querySelector('[data-testid=viewer-image]');
  const shown = () => img.dataset.state === 'ready' && img.dataset.frame === String(target);
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`frame ${target} not shown in 30 s`)), 30000);
    let started = 0;
    const observer = new MutationObserver(() => {
      if (!shown()) return;
      observer.disconnect();
      requestAnimationFrame(() => {
        clearTimeout(timer);
        resolve(performance.now() - started);
      });
    });
    observer.observe(img, { attributes: true, attributeFilter: ['data-state', 'data-frame'] });
    started = performance.now();
    if (how === 'key') {
      const key = new KeyboardEvent('keydown', { key: 'ArrowRight', bubbles: true });
      document.body.dispatchEvent(key);
    } else {
      const box = document.querySelector('[data-testid=frame-number]');
      box.value = String(target);
      box.dispatchEvent(new Event('input', { bubbles: true }));
      box.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
    }
  });
}"""


class Network:
    """Requests the page has in flight, to let prefetches end between samples."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.in_flight = 0
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _started(self, _request: Any) -> None:
        self.in_flight += 1

    def _ended(self, _request: Any) -> None:
        self.in_flight -= 1

    def settle(self, quiet_ms: int = 300, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(25)
            if self.in_flight > 0:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_ms / 1000:
                return
        raise SystemExit("the viewer's requests did not end")


class Bench:
    """The service with the gateway, a Redis, and throw-away users of the bench ESAF."""

    def __init__(self, work: Path) -> None:
        self.redis = EmbeddedRedis(work / "redis").start()
        self.users = BenchUsers()
        self.esaf = BENCH_ESAF if self.users.make_esaf_group() else 0
        self.service = LocalService(work / "service", self.redis.url, IDENTITY, web_port=0)
        self.service.start()

    def login_url(self, master: Path, frame: int) -> str:
        """A login link for a new user (a new worker), opening ``master`` at ``frame``."""
        token = self.service.session(self.users.make(), [self.esaf] if self.esaf else [])
        deep = "/?" + urlencode({"esaf": self.esaf, "path": str(master), "frame": frame})
        return self.service.login_url(token, deep)

    def forget_shared_views(self) -> None:
        """Empty the shared (Redis) view cache: another user's views are not reused."""
        url = self.service.settings.cache.redis_url
        assert url is not None
        redis.Redis.from_url(url).flushdb()

    def close(self) -> None:
        try:
            self.service.stop()
        finally:
            self.users.remove()
            self.redis.stop()


@contextmanager
def bench_and_browser() -> Iterator[tuple[Bench, Any]]:
    work = Path(tempfile.mkdtemp(prefix="imageserver-browserbench-", dir="/tmp"))
    work.chmod(0o755)
    bench = Bench(work)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                yield bench, browser
            finally:
                browser.close()
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)


def open_viewer(browser: Any, url: str) -> tuple[Any, Page, Network, list[str]]:
    """A new context (its own HTTP cache) on the viewer; page errors are collected."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    network = Network(page)
    page.goto(url)
    return context, page, network, problems


def wait_shown(page: Page, frame: int, *, raw: bool = True) -> None:
    render = "[data-render=raw]" if raw else ""
    page.wait_for_selector(f'{IMAGE}[data-state=ready][data-frame="{frame}"]{render}')


def measure(master: Path) -> tuple[list[float], list[float], list[float], float]:
    """Cold and prefetched frame changes, and a scrub: lists of ms, and the scrub's frames/s."""
    cold: list[float] = []
    prefetched: list[float] = []
    with bench_and_browser() as (bench, browser):
        context, page, network, problems = open_viewer(browser, bench.login_url(master, 1))
        wait_shown(page, 1)
        network.settle()
        # Blocks of three frames: jump to f (cold; f - 1 and f + 1 get prefetched), → to
        # f + 1 (prefetched; f + 2 gets prefetched), and on to f + 3, never asked for.
        for frame in range(3, N_FRAMES - 1, 3):
            cold.append(page.evaluate(TIMED_STEP, ["box", frame]))
            wait_shown(page, frame)
            network.settle()
            prefetched.append(page.evaluate(TIMED_STEP, ["key", frame + 1]))
            wait_shown(page, frame + 1)
            network.settle()
        context.close()

        bench.forget_shared_views()
        context, page, network, more = open_viewer(browser, bench.login_url(master, 1))
        problems += more
        wait_shown(page, 1)
        network.settle()
        scrub: list[float] = []
        started = time.perf_counter()
        for frame in range(2, 2 + SCRUB_FRAMES):
            scrub.append(page.evaluate(TIMED_STEP, ["key", frame]))
        rate = SCRUB_FRAMES / (sum(scrub) / 1000)
        wall = time.perf_counter() - started
        print(f"scrub: {SCRUB_FRAMES} frames in {wall:.2f} s wall", file=sys.stderr)
        context.close()
    if problems:
        print("the page reported errors:\n" + "\n".join(problems), file=sys.stderr)
    return cold, prefetched, scrub, rate


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_table(
    cold: list[float], prefetched: list[float], scrub: list[float], rate: float
) -> None:
    print(machine_line())
    print(f"chromium {CHROMIUM}, viewport {VIEWPORT['width']}×{VIEWPORT['height']}; ms in the page")
    print()
    head = (
        f"| {'what':<58} | {'runs':>4} | {'median ms':>9} | {'p95 ms':>7} | {'frames/s':>8} "
        f"| {'target':<17} | met |"
    )
    print(head)
    print("|" + "|".join("-" * len(cell) for cell in head.split("|")[1:-1]) + "|")
    rows = [
        ("cold 16M frame change (never viewed), frame box → painted", cold, "≤ 150 ms p50"),
        ("prefetched neighbour frame change, → key → painted", prefetched, "≤ 30 ms p50"),
        (f"scrubbing → through {SCRUB_FRAMES} new frames, each step", scrub, "≥ 10 frames/s"),
    ]
    for name, values, target in rows:
        median = statistics.median(values)
        if "frames/s" in target:
            shown_rate = f"{rate:.1f}"
            met = rate >= 10
        else:
            shown_rate = f"{1000 / median:.1f}"
            met = median <= float(target.split()[1])
        print(
            f"| {name:<58} | {len(values):>4} | {median:>9.1f} | {quantile(values, 0.95):>7.1f} "
            f"| {shown_rate:>8} | {target:<17} | {'✓' if met else '✗':^3} |"
        )


def screenshots(master: Path, directory: Path) -> None:
    """The viewer on the 16M sample with resolution rings, then zoomed on a corner's spots."""
    directory.mkdir(parents=True, exist_ok=True)
    with bench_and_browser() as (bench, browser):
        context, page, network, problems = open_viewer(browser, bench.login_url(master, 1))
        wait_shown(page, 1)
        page.wait_for_selector("[data-testid=dataset-browser][data-state=ready]")
        page.wait_for_selector("[data-testid=dataset-info] dt:text-is('Wavelength')")
        page.check("[data-testid=rings-toggle]")
        network.settle()
        page.mouse.move(VIEWPORT["width"] * 0.62, VIEWPORT["height"] * 0.36)  # a readout
        page.wait_for_timeout(300)
        page.screenshot(path=str(directory / "viewer.png"))
        box = page.locator(IMAGE).bounding_box()
        assert box is not None
        # zoom ×8 about a point between the beam and the upper right corner
        at = (box["x"] + box["width"] * 0.64, box["y"] + box["height"] * 0.33)
        for _ in range(3):
            page.mouse.move(*at)
            page.mouse.dblclick(*at)
            page.wait_for_timeout(150)
        network.settle(quiet_ms=600)
        page.mouse.move(at[0] + 40, at[1] + 25)
        page.wait_for_timeout(300)
        page.screenshot(path=str(directory / "viewer-zoom.png"))
        context.close()
    if problems:
        raise SystemExit("the page reported errors:\n" + "\n".join(problems))
    print(f"wrote {directory / 'viewer.png'} and {directory / 'viewer-zoom.png'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("sample-data-chain"))
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="write pictures, no timing")
    args = parser.parse_args()
    master = write_series_once(args.data.resolve())
    if args.screenshots is not None:
        screenshots(master, args.screenshots)
        return 0
    cold, prefetched, scrub, rate = measure(master)
    print_table(cold, prefetched, scrub, rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
