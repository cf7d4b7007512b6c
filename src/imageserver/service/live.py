"""LiveData: a worker's view of frames as the detector writes them.

Users follow the newest frame of a directory (the viewer's "follow latest" polls `latest`).
The directory a ``latest``, ``list`` or jpeg view names is watched (`watcher`); `latest`
then answers from the watch (`newest.WatchedListing`) instead of scanning. A frame written
there (a CBF or TIFF closed or moved in, a new or growing Eiger data file) is reduced once in
the background (`background`), at the size and look of the last whole-frame view asked in
that directory (else ``view_xsize_px`` wide, default look), so the user's first request
for it is a memory or Redis hit. A view of frame N queues N+1 and N−1 with its parameters
(`prefetch`); viewing another frame of the series replaces them.

`run` wraps every (short) job of the worker: background work never starts while a request
runs. The job's own answer and errors pass through unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imageserver.cache.renderer import CachedRenderer
from imageserver.config import LimitSettings, LiveSettings
from imageserver.formats import read_meta
from imageserver.formats.datasets import MASTER_SUFFIX, dataset_group, latest_dataset
from imageserver.render import Look, ViewSpec
from imageserver.service.background import LIVE, PREFETCH, BackgroundQueue
from imageserver.service.newest import WatchedListing
from imageserver.service.prefetch import neighbours
from imageserver.service.reply import Success
from imageserver.service.requests import (
    JpegRequest,
    LatestRequest,
    ListRequest,
    Request,
    echo_job,
)
from imageserver.service.view_of import look_of
from imageserver.service.watcher import Change, DirectoryEvent, DirectoryWatcher

log = logging.getLogger(__name__)

FOLLOWING_S = 2.0
"""A directory asked for its ``latest`` this recently is being followed (the viewer asks every
500 ms): its views prefetch nothing, as live data prepares what comes next and a follower
does not step back; prefetch resumes once the user browses by hand."""

Job = Callable[[Request, CachedRenderer, LimitSettings], Success]
OnReady = Callable[["Prepared"], None]


@dataclass(frozen=True)
class ViewShape:
    """How a directory's frames were last viewed whole: what new frames are prepared as."""

    xsize: int
    ysize: int | None
    look: Look | None
    """None: the reduced view alone (raw views); else the encoded image too."""


@dataclass(frozen=True)
class Prepared:
    """A frame made ready in the background (for tests, benchmarks and the DEBUG log)."""

    fn: str
    frame: int
    kind: str
    """`background.LIVE` or `background.PREFETCH`."""
    source: str
    """Where the renderer found it: "file" (reduced now), "memory", "image", "shared"…"""
    event_ns: int
    """`time.monotonic_ns` of the event (or view) that queued it."""
    ready_ns: int


class LiveData:
    """The watches, the prepared frames and the background thread of one worker."""

    def __init__(
        self,
        settings: LiveSettings,
        renderer: CachedRenderer,
        *,
        on_ready: OnReady | None = None,
    ) -> None:
        self.settings = settings
        self.renderer = renderer
        self.limits = renderer.limits
        self.on_ready = on_ready
        self.queue = BackgroundQueue(min_interval_s={LIVE: 1.0 / settings.max_frames_per_s})
        self.watcher = (
            DirectoryWatcher(
                self._on_events, max_dirs=settings.max_watched_dirs, idle_s=settings.watch_idle_s
            )
            if settings.watch
            else None
        )
        self._lock = threading.Lock()
        self._listings: dict[str, WatchedListing] = {}
        self._shapes: dict[str, ViewShape] = {}
        self.latest_answers = {"watch": 0, "scan": 0}
        self._followed: dict[str, float] = {}
        """Directory → when its ``latest`` was last asked (monotonic seconds)."""

    def run(
        self, request: Request, job: Job, renderer: CachedRenderer, limits: LimitSettings
    ) -> Success:
        """The job's answer to ``request``; watches and prefetches as it names places."""
        with self.queue.user_request():
            if isinstance(request, LatestRequest):
                answer = self._latest(request)
            else:
                answer = job(request, renderer, limits)
        if isinstance(request, ListRequest):
            self._watch(os.path.abspath(request.dir))
        elif isinstance(request, JpegRequest) and request.fn:
            self._viewed(request)
        return answer

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.queue.close()

    # -- latest --------------------------------------------------------------------------------

    def _latest(self, request: LatestRequest) -> Success:
        directory = os.path.abspath(request.dir)
        with self._lock:
            self._followed[directory] = time.monotonic()
        listing = self._watch(directory)
        if listing is not None and not os.access(directory, os.R_OK | os.X_OK):
            self._forget(directory)  # the scan below raises what the user must hear
            listing = None
        if listing is not None and not listing.is_seeded:
            listing.seed()
        if listing is not None and listing.is_seeded:
            dataset, frame = listing.latest()
            where = "watch"
        else:
            dataset, frame = latest_dataset(directory, limits=self.limits)
            where = "scan"
        self.latest_answers[where] += 1
        log.debug("latest %s: %s", directory, where)
        found = {"dataset": None if dataset is None else dataset.to_json(), "frame": frame}
        text = json.dumps(found, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return Success((echo_job(request), text.encode("utf-8")))

    def _watch(self, directory: str) -> WatchedListing | None:
        """The directory's listing when it is (now) watched, else None."""
        if self.watcher is None or not self.watcher.watch(directory):
            return None
        with self._lock:
            listing = self._listings.get(directory)
            if listing is None:
                listing = self._listings[directory] = WatchedListing(directory, self.limits)
            return listing

    def _forget(self, directory: str) -> None:
        with self._lock:
            self._listings.pop(directory, None)
            self._shapes.pop(directory, None)
        self.queue.drop(LIVE, directory)
        if self.watcher is not None:
            self.watcher.unwatch(directory)

    # -- events --------------------------------------------------------------------------------

    def _on_events(self, events: list[DirectoryEvent]) -> None:
        """On the watcher's thread: keep listings current, queue the newest frame of each
        directory."""
        now_ns = time.monotonic_ns()
        newest: dict[str, DirectoryEvent] = {}
        for event in events:
            with self._lock:
                listing = self._listings.get(event.directory)
            if event.change is Change.GONE:
                with self._lock:
                    self._listings.pop(event.directory, None)
                self.queue.drop(LIVE, event.directory)
                continue
            if listing is None:
                continue
            if event.change is Change.OVERFLOW:
                listing.is_seeded = False
                continue
            listing.update(event.name)
            if event.change in (Change.WRITTEN, Change.GROWING):
                newest[event.directory] = event
        if not self.settings.reduce_new_frames:
            return
        for directory, event in newest.items():
            task = self._new_frame_task(directory, event, now_ns)
            if task is not None:
                self.queue.put(LIVE, directory, [task])

    def _new_frame_task(
        self, directory: str, event: DirectoryEvent, event_ns: int
    ) -> Callable[[], None] | None:
        group = dataset_group(event.name)
        if group is None:
            return None
        shape = self._shape(directory)
        if group[0] == "eiger":
            master = os.path.join(directory, group[1] + MASTER_SUFFIX)

            def newest_eiger_frame() -> None:
                frame = read_meta(Path(master), limits=self.limits).last_frame
                self._prepare(master, frame, shape, LIVE, event_ns)

            return newest_eiger_frame
        if event.change is not Change.WRITTEN:
            return None  # a single-frame file is complete when closed
        path = os.path.join(directory, event.name)
        return lambda: self._prepare(path, 1, shape, LIVE, event_ns)

    # -- views and prefetch --------------------------------------------------------------------

    def _viewed(self, request: JpegRequest) -> None:
        fn = os.path.abspath(request.fn)
        directory = os.path.dirname(fn)
        if request.zoom == 1.0:
            self._remember_shape(directory, request)
        self._watch(directory)
        if not self.settings.prefetch or request.zoom != 1.0 or self._is_followed(directory):
            return
        look = None if request.image_format == "raw" else look_of(request)
        shape = ViewShape(request.xsize, request.ysize, look)
        now_ns = time.monotonic_ns()
        near = neighbours(fn, request.frame)
        tasks = [
            _bind(self._prepare, path, frame, shape, PREFETCH, now_ns)
            for path, frame in near.frames
        ]
        self.queue.put(PREFETCH, near.series, tasks)

    def _is_followed(self, directory: str) -> bool:
        with self._lock:
            now = time.monotonic()
            for gone in [d for d, at in self._followed.items() if now - at > FOLLOWING_S]:
                del self._followed[gone]
            return directory in self._followed

    def _remember_shape(self, directory: str, request: JpegRequest) -> None:
        with self._lock:
            known = self._shapes.get(directory)
            look = look_of(request) if request.image_format != "raw" else None
            if look is None and known is not None and known.xsize == request.xsize:
                look = known.look  # a raw copy follows its JPEG: keep the JPEG's look
            self._shapes[directory] = ViewShape(request.xsize, request.ysize, look)

    def _shape(self, directory: str) -> ViewShape:
        with self._lock:
            known = self._shapes.get(directory)
        return known or ViewShape(self.settings.view_xsize_px, None, Look())

    def _prepare(self, fn: str, frame: int, shape: ViewShape, kind: str, event_ns: int) -> None:
        """On the background thread: the view (and image) of one frame, into the caches."""
        spec = ViewSpec(path=Path(fn), frame=frame, xsize=shape.xsize, ysize=shape.ysize)
        if shape.look is None:
            source = self.renderer.reduced_view(spec, fn=fn).source
        else:
            source = self.renderer.jpeg(spec, shape.look, fn=fn).source
        prepared = Prepared(fn, frame, kind, source, event_ns, time.monotonic_ns())
        log.debug(
            "%s: %s frame %d ready (%s) %.1f ms after it was queued",
            kind,
            fn,
            frame,
            source,
            (prepared.ready_ns - event_ns) / 1e6,
        )
        if self.on_ready is not None:
            self.on_ready(prepared)


def _bind(
    prepare: Callable[[str, int, ViewShape, str, int], None],
    fn: str,
    frame: int,
    shape: ViewShape,
    kind: str,
    event_ns: int,
) -> Callable[[], None]:
    return lambda: prepare(fn, frame, shape, kind, event_ns)
