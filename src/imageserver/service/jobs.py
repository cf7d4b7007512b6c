"""JOBS: request type → handler → reply frames. Runs in a worker thread; knows no socket.

Handlers keep the legacy reply shapes (reference §1.4, §2.3–2.6): a jpeg that cannot be
made is still a 4-frame reply with a light-grey image and an empty meta frame — but the job
echo now says why, in an ``error`` field. spots and meta failures are one error text frame.

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
from imageserver.config import LimitSettings
from imageserver.errors import FrameRangeError, ImageServerError, MissingMetadataError
from imageserver.formats import read_meta
from imageserver.formats.legacy import legacy_meta
from imageserver.imaging.encode import encode_jpeg
from imageserver.imaging.label import add_label
from imageserver.render import Look, ViewSpec
from imageserver.service.meta_json import MetaJsonCache, encode_meta
from imageserver.service.requests import (
    JpegRequest,
    MetaRequest,
    ObsoleteRequest,
    Request,
    SpotsRequest,
    echo_job,
    parse_request,
)
from imageserver.transports.frames import error_frames, success_frames

log = logging.getLogger(__name__)

BLANK_GREY = 240
MAX_BLANK_PX = 4096
"""A blank answer is never larger than this, whatever xsize asked (legacy bug B12)."""

Job = Callable[[Request, CachedRenderer], list[bytes]]
_META_JSON = MetaJsonCache()


def handle(
    payload: bytes,
    limits: LimitSettings | None = None,
    renderer: CachedRenderer | None = None,
) -> list[bytes]:
    """The worker's entry point: one payload in, one reply body out, never raises for input.

    Without a ``renderer`` nothing is kept between requests (the CLI's and tests' case).
    """
    try:
        request = parse_request(payload, limits)
        return JOBS[type(request)](request, renderer or _uncached())
    except ImageServerError as exc:
        return error_frames(str(exc))


@functools.cache
def _uncached() -> CachedRenderer:
    return CachedRenderer.uncached()


def run_jpeg(request: Request, renderer: CachedRenderer) -> list[bytes]:
    assert isinstance(request, JpegRequest)
    if not request.fn:
        return _blank(request, "no file name (fn) in the request")
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
    try:
        served = renderer.jpeg(spec, look, fn=request.fn)
    except ImageServerError as exc:
        return _blank(request, str(exc))
    log.debug("jpeg %s frame %d: %s", request.fn, request.frame, served.source)
    image = served.value.image
    job = echo_job(request, wval_used=image.levels.white, bval_used=image.levels.black)
    return success_frames(job, _META_JSON.encode(served.value.meta, request.fn), image.data)


def _blank(request: JpegRequest, reason: str) -> list[bytes]:
    """The legacy light-grey square (with the banner if asked), and the reason in the echo."""
    width = min(max(request.xsize, 8), MAX_BLANK_PX)
    rgb = np.full((width, width, 3), BLANK_GREY, dtype=np.uint8)
    if request.label and request.label_height > 0:
        rgb = add_label(rgb, request.label[:63], request.label_height)
    return success_frames(echo_job(request, error=reason), b"", encode_jpeg(rgb, request.quality))


def run_spots(request: Request, renderer: CachedRenderer) -> list[bytes]:
    assert isinstance(request, SpotsRequest)
    if not request.fn:
        return error_frames("Missing filename (fn) for a spots request")
    spec = ViewSpec(path=Path(request.fn), frame=request.frame, xsize=request.xsize)
    served = renderer.reduced_view(spec, fn=request.fn)
    log.debug("spots %s frame %d: %s", request.fn, request.frame, served.source)
    if served.value.stats.spots is None:
        raise MissingMetadataError(f"{request.fn}: no beam centre in the file; cannot count spots")
    job = echo_job(request, xsize=request.xsize, zoom=1.0, segcol=0.0, segrow=0.0)
    return success_frames(job, _META_JSON.encode(served.value.meta, request.fn))


def run_meta(request: Request, _renderer: CachedRenderer) -> list[bytes]:
    assert isinstance(request, MetaRequest)
    if not request.fn:
        return error_frames("Missing filename (fn) for a meta request")
    meta = read_meta(Path(request.fn))
    if not meta.first_frame <= request.frame <= meta.last_frame:
        raise FrameRangeError(
            f"{request.fn}: frame {request.frame} is outside {meta.first_frame}..{meta.last_frame}"
        )
    return success_frames(
        echo_job(request), encode_meta(legacy_meta(meta, fn=request.fn, frame=request.frame))
    )


def run_obsolete(request: Request, _renderer: CachedRenderer) -> list[bytes]:
    assert isinstance(request, ObsoleteRequest)
    return error_frames(f"Obsolete job type '{request.type_name}'")


JOBS: dict[type, Job] = {
    JpegRequest: run_jpeg,
    SpotsRequest: run_spots,
    MetaRequest: run_meta,
    ObsoleteRequest: run_obsolete,
}
