"""JOBS: request type → handler → typed reply. Runs in a worker thread; knows no socket.

A handler returns `Success` with the legacy reply parts (reference §1.4, §2.3–2.6) or raises
an error of the tree, which becomes a `Failure` with its code. A jpeg that cannot be made
keeps the legacy answer as the failure's fallback: a light-grey image and an empty meta
frame, with the reason in the job echo's ``error`` field.

jpeg and spots go through the worker's `CachedRenderer`; where each answer came from is
logged at DEBUG level, e.g. ``jpeg <fn> frame 2: memory``; the sources are listed in
`imageserver.cache.renderer.SOURCES`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imageserver.cache.renderer import CachedRenderer
from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import ImageServerError, MissingMetadataError, RequestError
from imageserver.formats import read_meta
from imageserver.formats.base import frame_range_error
from imageserver.imaging.encode import encode_jpeg
from imageserver.imaging.label import add_label
from imageserver.render import Look, ViewSpec, series_meta
from imageserver.service.meta_json import MetaJsonCache
from imageserver.service.reply import Failure, Reply, Success
from imageserver.service.requests import (
    JpegRequest,
    MetaRequest,
    ObsoleteRequest,
    Request,
    SpotsRequest,
    echo_job,
    parse_request,
)

log = logging.getLogger(__name__)

BLANK_GREY = 240
MAX_BLANK_PX = 4096
"""A blank answer is never larger than this, whatever xsize asked (legacy bug B12)."""

Job = Callable[[Request, CachedRenderer, LimitSettings], Success]
_META_JSON = MetaJsonCache()


class Jobs:
    """A worker's handler: its renderer (and caches) and the limits every request obeys."""

    def __init__(self, renderer: CachedRenderer, limits: LimitSettings | None = None) -> None:
        """``limits`` default to the renderer's, so parsing and rendering cannot disagree."""
        self.renderer = renderer
        self.limits = limits or renderer.limits

    def __call__(self, payload: bytes) -> Reply:
        return handle(payload, self.limits, self.renderer)

    def release_idle(self) -> None:
        release = getattr(self.renderer, "release_idle", None)
        if release is not None:
            release()


def handle(
    payload: bytes,
    limits: LimitSettings | None = None,
    renderer: CachedRenderer | None = None,
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
        return JOBS[type(request)](request, renderer or _uncached(limits), limits)
    except ImageServerError as exc:
        if isinstance(request, JpegRequest):
            return Failure.of(exc, fallback=_blank(request, str(exc), limits))
        return Failure.of(exc)


@functools.cache
def _uncached(limits: LimitSettings) -> CachedRenderer:
    return CachedRenderer.uncached(limits=limits)


def run_jpeg(request: Request, renderer: CachedRenderer, limits: LimitSettings) -> Success:
    assert isinstance(request, JpegRequest)
    if not request.fn:
        raise RequestError("no file name (fn) in the request")
    spec = ViewSpec(
        path=Path(request.fn),
        frame=request.frame,
        xsize=request.xsize,
        ysize=request.ysize,
        zoom=request.zoom,
        segcol=request.segcol,
        segrow=request.segrow,
    )
    look = Look(
        contrast=request.contrast,
        wval=request.wval,
        colormap=request.colormap,
        label=request.label,
        label_height_px=request.label_height,
        quality=request.quality,
        chroma=request.chroma,
    )
    served = renderer.jpeg(spec, look, fn=request.fn)
    log.debug("jpeg %s frame %d: %s", request.fn, request.frame, served.source)
    image = served.value.image
    job = echo_job(request, wval_used=image.levels.white, bval_used=image.levels.black)
    return Success((job, _META_JSON.encode(served.value.meta, request.fn), image.data))


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


def run_obsolete(request: Request, _renderer: CachedRenderer, _limits: LimitSettings) -> Success:
    assert isinstance(request, ObsoleteRequest)
    raise RequestError(f"Obsolete job type '{request.type_name}'", reason="obsolete_type")


JOBS: dict[type, Job] = {
    JpegRequest: run_jpeg,
    SpotsRequest: run_spots,
    MetaRequest: run_meta,
    ObsoleteRequest: run_obsolete,
}
