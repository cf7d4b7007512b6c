"""CachedRenderer: the two-step pipeline of `render` with every costly result kept.

What is kept, and where:

- a file's frame size (memory and Redis): planning a view needs it before any pixels;
- the decoded frame (memory only): the 16 tiles of a ×4 zoom, or a spot count after a
  view, decode the file once. A 16M frame is 90 MB with its mask; even compressed (12 MB),
  fetching and decoding it from Redis takes ~32 ms against ~18 ms to decode the file again
  (benchmarks/cache_bench.py), so frames are never shared;
- the reduced view with its statistics and meta (memory and Redis): a new contrast, label or
  colour map costs only the 8-bit mapping and the encode, in any worker of the ESAF;
- the encoded image with its meta (memory only): an exact repeat costs a lookup.

Every answer says where it came from (`Served.source`); the worker logs it at DEBUG level
and reports it, with each decode's time, to the manager's metrics (`stage_times`).

Entries are charged what they keep alive (`entry_nbytes`), so the budget bounds the cache's
share of the worker's memory. A busy worker's resident size is then its fixed part, the
budget, and the working set of the largest requests it ran (glibc keeps freed memory for
the next frame, see `allocator`). An idle one gives most of it back: `release_idle`.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import numpy as np

from imageserver import formats, stage_times
from imageserver.allocator import release_free_memory, resident_bytes
from imageserver.analysis import AnalysisParams, analyse
from imageserver.cache.codec import DimsCodec, JsonCodec, ViewCodec
from imageserver.cache.keys import CacheKey, FileIdentity, Scope, cache_key, file_identity
from imageserver.cache.memory import MemoryCache, automatic_budget_bytes
from imageserver.cache.shared import RedisLink, SharedCache, WriteBehind
from imageserver.cache.sizes import array_nbytes, object_nbytes
from imageserver.cache.tiered import TieredCache
from imageserver.config import DEFAULT_LIMITS, CacheSettings, LimitSettings
from imageserver.errors import FrameRangeError, ImageServerError, RequestError
from imageserver.formats import open_source
from imageserver.formats.base import (
    STRIP_ELEMENTS,
    AnyFrame,
    EncodedFrame,
    Frame,
    FrameMeta,
    PixelArray,
)
from imageserver.imaging.geometry import View, plan_view
from imageserver.imaging.reduce import RowSource
from imageserver.memo import IdentityMemo
from imageserver.redis_connect import RedisTarget
from imageserver.render import Look, ReducedView, RenderedImage, ViewSpec, reduce_view, render_jpeg

log = logging.getLogger(__name__)

V = TypeVar("V")
Decode = Callable[[Path, int], AnyFrame]
FrameFiles = Callable[[Path, int], tuple[str, ...]]

BAND_ELEMENTS = 4 * STRIP_ELEMENTS
"""Pixels per decoded band kept for zoomed views (4 MB of uint32, 252 rows of a 16M frame):
a ×4 tile decodes 5 bands, and each band is one strip of the reduction (strips align with
bands, so none straddles two). Measured on a 16M frame here, one ×4 tile of a viewed frame
/ 16 tiles of a new frame at once: 57 / 282 ms with bands of 63 rows, 45 / 208 with these,
105 / 204 decoding the whole frame."""
BAND_BUDGET_FRACTION = 1 / 4
"""The share of a worker's budget that holds decoded bands, in a tier of their own: bands
are all one size, so a new one reuses the memory of the one it evicts instead of fresh
pages (which cost a growing worker ~0.7 ms per MB here), as it would among views of every
size in the main tier. A quarter of 512 MiB holds one 16M frame's bands and a half."""
IDLE_KEEP_FRACTION = 1 / 16
"""What an idle worker's memory tier keeps of its budget: its last few views, no big frames."""
SOURCES = stage_times.SOURCES
"""Where an answer came from (defined with the stage times, which the manager reads without
the render stack)."""


@dataclass(frozen=True)
class Served(Generic[V]):
    value: V
    source: str


@dataclass(frozen=True)
class RenderedReply:
    """An encoded image and the meta of the view it shows: all an exact repeat needs."""

    image: RenderedImage
    meta: dict[str, Any]


@dataclass
class RendererCounts:
    """How many answers came from each source since start."""

    by_source: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))


def entry_nbytes(value: object) -> int:
    """Bytes a memory-cache entry keeps alive: its arrays' owning buffers and its objects.

    A frame's metadata is usually shared by every frame of its series (and held by the
    reader's layout cache as well), so it is measured once per metadata object. An encoded
    (Eiger) frame's mask is the series' own, held by the reader's layout whether or not a
    frame is kept, so only its compressed stream is charged: 8–12 MB for a 16M frame.
    """
    if isinstance(value, Frame):
        mask = 0 if value.mask is None else array_nbytes(value.mask)
        return array_nbytes(value.pixels) + mask + _meta_nbytes(value.meta)
    if isinstance(value, EncodedFrame):
        return value.nbytes + _meta_nbytes(value.meta)
    if isinstance(value, ReducedView):
        reduced = value.reduced
        arrays = array_nbytes(reduced.values) + array_nbytes(reduced.flags)
        return arrays + object_nbytes(value.stats) + _view_meta_nbytes(value.meta)
    if isinstance(value, RenderedReply):
        return object_nbytes(value.image) + _view_meta_nbytes(value.meta)
    return object_nbytes(value)


def _view_meta_nbytes(meta: dict[str, Any]) -> int:
    """A view's meta dict: its own scalars, and the series' lists and dicts it shares with
    every view of the series, each measured once (walking them per view cost 1–5 ms)."""
    total = sys.getsizeof(meta)
    for value in meta.values():
        is_shared = isinstance(value, (list, tuple, dict, np.ndarray))
        total += _shared_nbytes(value) if is_shared else sys.getsizeof(value)
    return total


_shared_nbytes: IdentityMemo[object, int] = IdentityMemo(object_nbytes, capacity=1024)


_meta_nbytes: IdentityMemo[FrameMeta, int] = IdentityMemo(object_nbytes)
"""An Eiger series' metadata holds per-frame angle lists (15 ms to walk for 3600 frames):
measured once per metadata object, which `render` keeps alive for its legacy meta anyway."""


class CachedRenderer:
    """Views and images of frames for one worker, from the cheapest place that has them."""

    def __init__(
        self,
        scope: Scope,
        memory: MemoryCache[Any],
        *,
        shared_views: SharedCache[ReducedView] | None = None,
        shared_dims: SharedCache[tuple[int, int]] | None = None,
        shared_analyses: SharedCache[bytes] | None = None,
        decode: Decode | None = None,
        frame_files: FrameFiles | None = None,
        limits: LimitSettings = DEFAULT_LIMITS,
        bands: MemoryCache[Any] | None = None,
    ) -> None:
        """``limits`` are the worker's `LimitSettings`, the same its request parser used:
        every decode, header read and view plan here obeys them. ``bands`` holds the decoded
        rows of zoomed frames (`_kept_rows`), else ``memory`` does."""
        self.scope = scope
        self.memory = memory
        self.bands = memory if bands is None else bands
        self.views: TieredCache[ReducedView] = TieredCache(memory, shared_views)
        self.dims: TieredCache[tuple[int, int]] = TieredCache(memory, shared_dims)
        self.analyses: TieredCache[bytes] = TieredCache(memory, shared_analyses)
        self.limits = limits
        self.decode: Decode = stage_times.timed(
            "decode", decode or functools.partial(open_source, limits=limits)
        )
        self.frame_files: FrameFiles = frame_files or functools.partial(
            formats.frame_files, limits=limits
        )
        self.counts = RendererCounts()
        self._counts_lock = threading.Lock()

    @classmethod
    def uncached(
        cls, decode: Decode | None = None, *, limits: LimitSettings = DEFAULT_LIMITS
    ) -> CachedRenderer:
        """Nothing kept (a zero budget), but concurrent equal requests still compute once."""
        scope = Scope.for_worker(os.getgid(), os.getcwd())
        return cls(scope, MemoryCache(0, entry_nbytes), decode=decode, limits=limits)

    def reduced_view(self, spec: ViewSpec, *, fn: str) -> Served[ReducedView]:
        """The full-depth view ``spec`` asks for, with its statistics and meta."""
        files = self._files(spec)
        if files is None:  # unreadable or odd: the reader raises the right error
            frame = self.decode(spec.path, spec.frame)
            view = reduce_view(frame, spec, fn=fn, limits=self.limits)
            return self._served(Served(view, "file"))
        planned = self._planned(files, spec, fn)
        return self._served(planned.made or self._reduced_view(files, spec, fn, planned.view))

    def jpeg(self, spec: ViewSpec, look: Look, *, fn: str) -> Served[RenderedReply]:
        """The encoded image of ``spec`` with ``look``, and the meta of its view."""
        files = self._files(spec)
        if files is None:
            frame = self.decode(spec.path, spec.frame)
            view = reduce_view(frame, spec, fn=fn, limits=self.limits)
            image = render_jpeg(view, look, limits=self.limits)
            return self._served(Served(RenderedReply(image, view.meta), "file"))
        planned = self._planned(files, spec, fn)
        key = files.key(self.scope, spec.frame, view=planned.view, look=look)
        source = ["image"]

        def render() -> RenderedReply:
            served = planned.made or self._reduced_view(files, spec, fn, planned.view)
            source[0] = served.source
            image = render_jpeg(served.value, look, limits=self.limits)
            return RenderedReply(image, served.value.meta)

        reply: RenderedReply = self.memory.get_or_compute(key, render)
        return self._served(Served(reply, source[0]))

    def release_idle(self, keep_fraction: float = IDLE_KEEP_FRACTION) -> int:
        """Shrink the memory tier to ``keep_fraction`` of its budget and return the freed
        memory to the system; the bytes dropped from the cache.

        For the worker's loop after an idle spell: otherwise every worker ever busy would keep
        its whole budget (and its largest requests' working set) until it is retired. The most
        recently used entries stay. Costs ~0.3 ms per MiB returned, mostly malloc_trim.
        """
        dropped = self.memory.shrink(int(self.memory.max_bytes * keep_fraction))
        if self.bands is not self.memory:
            dropped += self.bands.shrink(0)
        gc.collect()  # a failed request's traceback may hold a frame in a reference cycle
        before = resident_bytes()
        release_free_memory()
        log.debug(
            "idle: dropped %d MiB of cache, resident %d → %d MiB",
            dropped >> 20,
            before >> 20,
            resident_bytes() >> 20,
        )
        return dropped

    # -- steps ---------------------------------------------------------------------------------

    def analysis(self, spec: ViewSpec, params: AnalysisParams) -> Served[bytes]:
        """DIALS's per-image numbers and spots of the frame, as the reply's JSON bytes; kept
        in memory and in Redis like views, for every user of the ESAF."""

        def compute(frame: AnyFrame) -> bytes:
            result = analyse(frame, params).to_json()
            return json.dumps(result, separators=(",", ":"), allow_nan=False).encode()

        files = self._files(spec)
        if files is None:
            return self._served(Served(compute(self.decode(spec.path, spec.frame)), "file"))
        source = ["file"]

        def from_frame() -> bytes:
            frame, source[0] = self._frame(files, spec)
            return compute(frame)

        key = files.key(self.scope, spec.frame, analysis=params)
        value, where = self.analyses.fetch(key, from_frame)
        return self._served(Served(value, source[0] if where == "computed" else where))

    def _files(self, spec: ViewSpec) -> _Files | None:
        """The identities of the files the frame comes from; None if any cannot be read."""
        file = file_identity(spec.path, self.scope)
        if file is None:
            return None
        try:
            paths = _frame_paths(file, spec.path, spec.frame, self.frame_files)
        except (ImageServerError, OSError):
            return None
        others = []
        for path in paths:
            other = file_identity(path, self.scope)
            if other is None:
                return None
            others.append(other)
        return _Files(file, tuple(others))

    def _planned(self, files: _Files, spec: ViewSpec, fn: str) -> _Planned:
        """The view ``spec`` asks for on this file, which needs the file's frame size.

        The size is kept in memory and Redis. When neither has it, the frame is decoded and
        the view made and stored *before* the size is: processes that waited for the size
        then find the view too, instead of each decoding the frame again.

        Everyone waiting shares the size, so nothing about this request may fail it: a frame
        outside the file gives the size from the header instead (this request then meets its
        own FrameRangeError when it decodes), and a view that cannot be made fails only this
        request, after the size is stored.
        """
        made: list[Served[ReducedView]] = []
        failed: list[Exception] = []

        def size_and_view() -> tuple[int, int]:
            try:
                frame, source = self._frame(files, spec, is_zoomed=spec.zoom > 1)
            except FrameRangeError:
                meta = formats.read_meta(spec.path, limits=self.limits)
                return meta.width_px, meta.height_px
            size = (frame.meta.width_px, frame.meta.height_px)
            try:
                view = _plan(size, spec, self.limits)
            except RequestError:
                return size  # keep the size; the caller's own planning raises the error
            try:
                made.append(self._reduced_view(files, spec, fn, view, (frame, source)))
            except Exception as exc:  # this request's view: raised below, to it alone
                failed.append(exc)
            return size

        size = self.dims.get_or_compute(cache_key(self.scope, files.file), size_and_view)
        if failed:
            raise failed[0]
        return _Planned(_plan(size, spec, self.limits), made[0] if made else None)

    def _reduced_view(
        self,
        files: _Files,
        spec: ViewSpec,
        fn: str,
        view: View,
        held: tuple[AnyFrame, str] | None = None,
    ) -> Served[ReducedView]:
        key = files.key(self.scope, spec.frame, view=view)
        source = ["file"]

        def reduce() -> ReducedView:
            frame, source[0] = held or self._frame(files, spec, is_zoomed=view.zoom > 1)
            if not (isinstance(frame, EncodedFrame) and view.zoom > 1):
                return reduce_view(frame, spec, fn=fn, limits=self.limits)
            rows = self._kept_rows(files.key(self.scope, spec.frame), frame)
            # Kept bands are decoded already: a strip per band, not per cache-sized piece.
            return reduce_view(
                frame, spec, fn=fn, limits=self.limits, rows=rows, strip_elements=BAND_ELEMENTS
            )

        # Holding the frame, a reduction costs a few ms: no need to make other processes wait.
        is_held = held is not None or files.key(self.scope, spec.frame) in self.memory
        value, where = self.views.fetch(key, reduce, claim=not is_held)
        return Served(value, source[0] if where == "computed" else where)

    def _frame(
        self, files: _Files, spec: ViewSpec, *, is_zoomed: bool = False
    ) -> tuple[AnyFrame, str]:
        """The decoded frame and "frame" (held in memory) or "file" (decoded now).

        A compressed (Eiger) frame is kept only for zoomed views, whose tiles come together
        and decode bands of it (`_kept_rows`). A whole view of a new frame does not keep it:
        re-reading the chunk costs a zoom 5 ms, while keeping 8–12 MB of fresh memory per
        frame costs a new worker that much in page faults on every frame it is shown.
        """
        source = ["frame"]

        def decode() -> AnyFrame:
            source[0] = "file"
            return self.decode(spec.path, spec.frame)

        def keep(frame: AnyFrame) -> bool:
            return is_zoomed or not isinstance(frame, EncodedFrame)

        key = files.key(self.scope, spec.frame)
        frame: AnyFrame = self.memory.get_or_compute(key, decode, keep)
        return frame, source[0]

    def _kept_rows(self, frame_key: CacheKey, frame: EncodedFrame) -> RowSource:
        """Rows of ``frame`` from decoded bands kept in the band tier, for zoomed views.

        The tiles of a zoomed frame come together and each shows a quarter (or less) of the
        rows across part of the width: decoding only the blocks of its rows, each tile would
        decode its band of rows again for every tile beside it. Bands of `BAND_ELEMENTS`
        are decoded once, by whichever tile asks first, and kept in ``bands``; a whole view
        (zoom 1) decodes strips that it does not keep.
        """
        height, width = frame.shape
        band = max(1, BAND_ELEMENTS // width)

        def band_rows(index: int) -> PixelArray:
            first = index * band
            decoded: PixelArray = self.bands.get_or_compute(
                (frame_key, "rows", index), lambda: frame.rows(first, min(height, first + band))
            )
            return decoded

        def rows(first: int, stop: int) -> PixelArray:
            if stop <= first:
                return frame.rows(first, first)
            pieces = [
                band_rows(index)[max(first - index * band, 0) : stop - index * band]
                for index in range(first // band, (stop - 1) // band + 1)
            ]
            return pieces[0] if len(pieces) == 1 else cast(PixelArray, np.concatenate(pieces))

        return rows

    def _served(self, served: Served[V]) -> Served[V]:
        stage_times.note_source(served.source)
        with self._counts_lock:
            self.counts.by_source[served.source] += 1
        return served


@dataclass(frozen=True)
class _Files:
    """The file a request names and the frame's other source files (an Eiger data file)."""

    file: FileIdentity
    others: tuple[FileIdentity, ...]

    def key(
        self,
        scope: Scope,
        frame: int,
        *,
        view: View | None = None,
        look: Look | None = None,
        analysis: AnalysisParams | None = None,
    ) -> CacheKey:
        """The key of the frame, or of a view, image or analysis of it."""
        return cache_key(
            scope,
            self.file,
            frame=frame,
            frame_files=self.others,
            view=view,
            look=look,
            analysis=analysis,
        )


@dataclass(frozen=True)
class _Planned:
    view: View
    made: Served[ReducedView] | None
    """The view itself, when learning the frame size meant making it."""


@functools.lru_cache(maxsize=4096)
def _frame_paths(
    file: FileIdentity, path: Path, frame: int, frame_files: FrameFiles
) -> tuple[str, ...]:
    """`frame_files`, once per version of the named file (its links cannot change without
    changing it): 0.1 ms less per request than sniffing the file and walking its layout."""
    return frame_files(path, frame)


def _plan(size: tuple[int, int], spec: ViewSpec, limits: LimitSettings) -> View:
    return plan_view(
        size[0],
        size[1],
        xsize=spec.xsize,
        ysize=spec.ysize,
        zoom=spec.zoom,
        segcol=spec.segcol,
        segrow=spec.segrow,
        limits=limits,
    )


def renderer_for_worker(
    spec: dict[str, Any],
    settings: CacheSettings,
    limits: LimitSettings = DEFAULT_LIMITS,
    *,
    link: RedisLink | None = None,
) -> CachedRenderer:
    """The renderer of a worker process, built after it dropped its privileges.

    ``spec["cache"]``, from the manager's `CacheAccess`, holds the shared tier's address and
    this ESAF group's Redis user (or pass the ``link`` made from it by `worker_link`, to share
    it); without either the worker keeps to its memory tier.
    """
    scope = Scope.for_worker(int(spec["gid"]), str(spec["home"]))
    budget = (
        settings.memory_budget_bytes
        if settings.memory_budget_bytes >= 0
        else automatic_budget_bytes()
    )
    band_budget = int(budget * BAND_BUDGET_FRACTION)
    memory: MemoryCache[Any] = MemoryCache(
        budget - band_budget, entry_nbytes, max_entry_fraction=settings.max_entry_fraction
    )
    bands: MemoryCache[Any] = MemoryCache(band_budget, entry_nbytes, max_entry_fraction=0.5)
    link = link or worker_link(spec.get("cache"), settings)
    if link is None:
        return CachedRenderer(scope, memory, limits=limits, bands=bands)
    writer = WriteBehind()
    return CachedRenderer(
        scope,
        memory,
        shared_views=SharedCache(
            link, ViewCodec(), ttl_s=settings.ttl_s, claim_s=settings.claim_s, writer=writer
        ),
        shared_dims=SharedCache(
            link, DimsCodec(), ttl_s=settings.ttl_s, claim_s=settings.claim_s, writer=writer
        ),
        shared_analyses=SharedCache(
            link, JsonCodec(), ttl_s=settings.ttl_s, claim_s=settings.claim_s, writer=writer
        ),
        limits=limits,
        bands=bands,
    )


def worker_link(access: object, settings: CacheSettings) -> RedisLink | None:
    """The link to the shared tier as this worker's ESAF group's Redis user, from the
    ``cache`` entry of its grant (a URL, or sentinels to follow); None when it has none."""
    if not isinstance(access, dict) or not access.get("url"):
        return None
    return RedisLink.connect(
        RedisTarget.from_table(access),
        prefix=settings.key_prefix,
        timeout_s=settings.redis_timeout_s,
        retry_s=settings.redis_retry_s,
        username=access.get("user"),
        password=access.get("password"),
    )
