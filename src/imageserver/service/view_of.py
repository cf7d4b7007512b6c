"""What a jpeg request asks to see: the view (which pixels, at what size) and the look (how
they become colours). One place for both, so a frame prepared ahead of its request (live
data, prefetch) is the very cache entry that request looks up."""

from __future__ import annotations

from pathlib import Path

from imageserver.render import Look, ViewSpec
from imageserver.service.requests import JpegRequest


def spec_of(request: JpegRequest) -> ViewSpec:
    return ViewSpec(
        path=Path(request.fn),
        frame=request.frame,
        xsize=request.xsize,
        ysize=request.ysize,
        zoom=request.zoom,
        segcol=request.segcol,
        segrow=request.segrow,
    )


def look_of(request: JpegRequest) -> Look:
    return Look(
        contrast=request.contrast,
        wval=request.wval,
        colormap=request.colormap,
        label=request.label,
        label_height_px=request.label_height,
        quality=request.quality,
        chroma=request.chroma,
        image_format="png" if request.image_format == "png" else "jpeg",
        levels=request.levels,
    )
