"""JOBS: request type → handler → typed reply. Runs in a worker thread; knows no socket.

A handler returns `Success` with the legacy reply parts (reference §1.4, §2.3–2.6) or raises
an error of the tree, which becomes a `Failure` with its code. A jpeg that cannot be made
keeps the legacy answer as the failure's fallback: a light-grey image and an empty meta
frame, with the reason in the job echo's ``error`` field.

jpeg and spots go through the worker's `CachedRenderer`; where each answer came from is
logged at DEBUG level, e.g. ``jpeg <fn> frame 2: memory``; the sources are listed in
`imageserver.cache.renderer.SOURCES`. A jpeg's echo says which source pixels the view shows
(``window``: x0, y0, x1, y1, unclipped), so a client can map a click to the detector.

A jpeg with ``format`` "raw" answers the cached reduced view itself, nothing encoded:
``["", job, meta, values + flags]``, the values as byte planes of `raw_dtype` (uint16 when
every value fits; see `raw_bytes`), then one flag byte per pixel, the reduction's own flags
(0 usable, 1 masked, 2 saturated: `imaging.reduce.Flags`); the echo gains ``raw`` (dtype,
height, width) and the levels this request would have used. Only a plain JPEG failure keeps
the legacy grey fallback: a PNG or raw client expects no JPEG.

``list`` and ``latest`` read a directory as datasets (`formats.datasets`) as the user;
``job`` reads an index job's record from the ESAF's `JobBoard`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imageserver.analysis import AnalysisParams
from imageserver.cache.renderer import CachedRenderer
from imageserver.config import DEFAULT_LIMITS, IndexSettings, LimitSettings
from imageserver.errors import ImageServerError, MissingMetadataError, RequestError
from imageserver.formats import read_meta
from imageserver.formats.base import frame_range_error
from imageserver.formats.datasets import latest_dataset, list_datasets
from imageserver.imaging.encode import encode_jpeg
from imageserver.imaging.label import add_label
from imageserver.imaging.reduce import Flags, Reduced
from imageserver.render import Look, ReducedView, ViewSpec, series_meta, source_window, view_levels
from imageserver.service.index_jobs import IndexJobs, monotonic_deadline
from imageserver.service.live import LiveData
from imageserver.service.meta_json import MetaJsonCache
from imageserver.service.reply import Failure, Reply, Success
from imageserver.service.requests import (
    AnalysisRequest,
    CancelRequest,
    IndexRequest,
    JobRequest,
    JpegRequest,
    LatestRequest,
    ListRequest,
    MetaRequest,
    ObsoleteRequest,
    Request,
    SpotsRequest,
    WhoamiRequest,
    echo_job,
    parse_request,
)
from imageserver.service.view_of import look_of, spec_of

log = logging.getLogger(__name__)

RAW_FLAGS = {
    "usable": int(Flags.OK),
    "masked": int(Flags.MASKED),
    "saturated": int(Flags.SATURATED),
}
"""A raw reply's flag bytes are the reduction's flags as they are: 0, 1, 2 (docs/http-api.md)."""
BLANK_GREY = 240
MAX_BLANK_PX = 4096
"""A blank answer is never larger than this, whatever xsize asked (legacy bug B12)."""

Job = Callable[[Request, CachedRenderer, LimitSettings], Success]
_META_JSON = MetaJsonCache()


class Jobs:
    """A worker's handler: its renderer (and caches), its index jobs, and the limits every
    request obeys."""

    def __init__(
        self,
        renderer: CachedRenderer,
        limits: LimitSettings | None = None,
        index: IndexJobs | None = None,
        live: LiveData | None = None,
    ) -> None:
        """``limits`` default to the renderer's, so parsing and rendering cannot disagree.
        ``live`` watches what short jobs name and prepares frames (`service.live`)."""
        self.renderer = renderer
        self.limits = limits or renderer.limits
        self.index = index or IndexJobs(IndexSettings())
        self.live = live

    def __call__(self, payload: bytes) -> Reply:
        return handle(payload, self.limits, self.renderer, index=self.index, live=self.live)

    def is_long(self, payload: bytes) -> bool:
        """An index job: it gets a thread of its own, never a view job's."""
        return payload_type(payload) == "index"

    def run_long(self, payload: bytes, deadline_ns: int) -> Reply:
        return handle(
            payload, self.limits, self.renderer, index=self.index, deadline_ns=deadline_ns
        )

    def release_idle(self) -> None:
        release = getattr(self.renderer, "release_idle", None)
        if release is not None:
            release()


def handle(
    payload: bytes,
    limits: LimitSettings | None = None,
    renderer: CachedRenderer | None = None,
    *,
    index: IndexJobs | None = None,
    deadline_ns: int = 0,
    live: LiveData | None = None,
) -> Reply:
    """One payload in, one typed reply out; never raises for bad input or a bad file.

    Without a ``renderer`` nothing is kept between requests (the CLI's and tests' case).
    """
    limits = limits or DEFAULT_LIMITS
    try:
        request = parse_request(payload, limits)
    except ImageServerError as exc:
        return Failure.of(exc)
    try:
        if isinstance(request, IndexRequest | CancelRequest | JobRequest):
            jobs = index or IndexJobs(IndexSettings())
            return run_index(request, jobs, monotonic_deadline(deadline_ns))
        job = JOBS[type(request)]
        if live is not None:
            return live.run(request, job, renderer or _uncached(limits), limits)
        return job(request, renderer or _uncached(limits), limits)
    except ImageServerError as exc:
        if isinstance(request, JpegRequest) and request.image_format == "jpeg":
            return Failure.of(exc, fallback=_blank(request, str(exc), limits))
        return Failure.of(exc)


@functools.cache
def _uncached(limits: LimitSettings) -> CachedRenderer:
    return CachedRenderer.uncached(limits=limits)


def run_jpeg(request: Request, renderer: CachedRenderer, limits: LimitSettings) -> Success:
    assert isinstance(request, JpegRequest)
    if not request.fn:
        raise RequestError("no file name (fn) in the request")
    spec, look = spec_of(request), look_of(request)
    if request.image_format == "raw":
        viewed = renderer.reduced_view(spec, fn=request.fn)
        log.debug("raw %s frame %d: %s", request.fn, request.frame, viewed.source)
        return _raw_reply(request, viewed.value, look)
    served = renderer.jpeg(spec, look, fn=request.fn)
    log.debug("jpeg %s frame %d: %s", request.fn, request.frame, served.source)
    image = served.value.image
    job = echo_job(
        request,
        wval_used=image.levels.white,
        bval_used=image.levels.black,
        window=list(image.window),
    )
    return Success((job, _META_JSON.encode(served.value.meta, request.fn), image.data))


def _raw_reply(request: JpegRequest, view: ReducedView, look: Look) -> Success:
    """The reduced view's values and flags, and the levels ``look`` would have drawn it with."""
    reduced = view.reduced
    height, width = reduced.values.shape
    levels = view_levels(view, look)
    job = echo_job(
        request,
        wval_used=levels.white,
        bval_used=levels.black,
        window=list(source_window(reduced.view)),
        raw={"dtype": raw_dtype(reduced).name, "height": height, "width": width},
    )
    meta = _META_JSON.encode(view.meta, request.fn)
    return Success((job, meta, raw_bytes(reduced)))


def raw_dtype(reduced: Reduced) -> np.dtype[Any]:
    """uint16 whenever every value fits: most 32-bit views do, and half the bytes travel."""
    values = reduced.values
    if values.dtype == np.uint32 and values.size and int(values.max()) <= 0xFFFF:
        return np.dtype(np.uint16)
    return values.dtype


def raw_bytes(reduced: Reduced) -> bytes:
    """The values in `raw_dtype` as byte planes (all least significant bytes, then the next,
    …), then the flags. The high planes are nearly all zero: the gateway's gzip takes 2–3×
    less time on them than on interleaved values, and the result is a third smaller."""
    dtype = raw_dtype(reduced).newbyteorder("<")
    values = np.ascontiguousarray(reduced.values, dtype=dtype)
    planes = values.view(np.uint8).reshape(-1, dtype.itemsize).T
    return b"".join((np.ascontiguousarray(planes).data, np.ascontiguousarray(reduced.flags).data))


def _blank(request: JpegRequest, reason: str, limits: LimitSettings) -> tuple[bytes, ...]:
    """The legacy light-grey square (with the banner if asked), and the reason in the echo."""
    width = min(max(request.xsize, 8), MAX_BLANK_PX)
    rgb = np.full((width, width, 3), BLANK_GREY, dtype=np.uint8)
    if request.label and request.label_height > 0:
        rgb = add_label(rgb, request.label[:63], request.label_height, limits=limits)
    return (echo_job(request, error=reason), b"", encode_jpeg(rgb, request.quality))


def run_spots(request: Request, renderer: CachedRenderer, _limits: LimitSettings) -> Success:
    assert isinstance(request, SpotsRequest)
    spec = ViewSpec(path=Path(request.fn), frame=request.frame, xsize=request.xsize)
    served = renderer.reduced_view(spec, fn=request.fn)
    log.debug("spots %s frame %d: %s", request.fn, request.frame, served.source)
    if served.value.stats.spots is None:
        raise MissingMetadataError(f"{request.fn}: no beam centre in the file; cannot count spots")
    job = echo_job(request, xsize=request.xsize, zoom=1.0, segcol=0.0, segrow=0.0)
    return Success((job, _META_JSON.encode(served.value.meta, request.fn)))


def run_meta(request: Request, _renderer: CachedRenderer, limits: LimitSettings) -> Success:
    assert isinstance(request, MetaRequest)
    meta = read_meta(Path(request.fn), limits=limits)
    if not meta.first_frame <= request.frame <= meta.last_frame:
        raise frame_range_error(request.fn, request.frame, meta.first_frame, meta.last_frame)
    meta_json = _META_JSON.encode_frame(series_meta(meta), request.fn, request.frame)
    return Success((echo_job(request), meta_json))


def run_list(request: Request, _renderer: CachedRenderer, limits: LimitSettings) -> Success:
    assert isinstance(request, ListRequest)
    listing = list_datasets(request.dir, limits=limits)
    return Success((echo_job(request), _json(listing.to_json())))


def run_latest(request: Request, _renderer: CachedRenderer, limits: LimitSettings) -> Success:
    assert isinstance(request, LatestRequest)
    dataset, frame = latest_dataset(request.dir, limits=limits)
    found = {"dataset": None if dataset is None else dataset.to_json(), "frame": frame}
    return Success((echo_job(request), _json(found)))


def _json(value: object) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def run_obsolete(request: Request, _renderer: CachedRenderer, _limits: LimitSettings) -> Success:
    assert isinstance(request, ObsoleteRequest)
    raise RequestError(f"Obsolete job type '{request.type_name}'", reason="obsolete_type")


def run_index(request: Request, index: IndexJobs, deadline: float) -> Success:
    """``["", job, result]``: the indexing result, or its error result (legacy §2.5)."""
    if isinstance(request, CancelRequest):
        stopped = index.cancel(request.tag or "")
        return Success((echo_job(request), json.dumps({"cancelled": stopped}).encode()))
    if isinstance(request, JobRequest):
        record = index.board.read(request.tag or "")
        return Success((echo_job(request), json.dumps(record, allow_nan=False).encode()))
    assert isinstance(request, IndexRequest)
    result = index.run(request, deadline)
    return Success((echo_job(request), json.dumps(result, allow_nan=False).encode()))


def payload_type(payload: bytes) -> str:
    """The request's type, lower-case, or "" when the payload is not a JSON object with one;
    the full parse (and its refusal) happens in the job."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    kind = value.get("type") if isinstance(value, dict) else None
    return kind.lower() if isinstance(kind, str) else ""


def run_analysis(request: Request, renderer: CachedRenderer, _limits: LimitSettings) -> Success:
    """``["", job, result]``: DIALS's nine per-image numbers and the spot list."""
    assert isinstance(request, AnalysisRequest)
    params = AnalysisParams(
        d_min=request.d_min,
        d_max=request.d_max,
        algorithm=request.algorithm,
        filter_ice=request.filter_ice,
    )
    spec = ViewSpec(path=Path(request.fn), frame=request.frame)
    served = renderer.analysis(spec, params)
    log.debug("analysis %s frame %d: %s", request.fn, request.frame, served.source)
    return Success((echo_job(request), served.value))


def run_whoami(request: Request, _renderer: CachedRenderer, _limits: LimitSettings) -> Success:
    """The manager answers whoami from the session; a worker never holds that session."""
    raise RequestError("whoami is answered by the manager, not by a worker")


JOBS: dict[type, Job] = {
    JpegRequest: run_jpeg,
    SpotsRequest: run_spots,
    MetaRequest: run_meta,
    ListRequest: run_list,
    LatestRequest: run_latest,
    ObsoleteRequest: run_obsolete,
    WhoamiRequest: run_whoami,
    AnalysisRequest: run_analysis,
}
