"""The two-step pipeline: frame → full-depth view (costly, cacheable) → 8-bit image (cheap).

`reduce_view` does the expensive part once per (file, frame, geometry) and returns a
`ReducedView` holding everything a later contrast, colour map or label needs; `render_jpeg`
maps it to 8 bits and encodes it. The cache tier stores `ReducedView`s, so a new contrast
costs only the second step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageserver.errors import RequestError
from imageserver.formats import open_frame
from imageserver.formats.base import Frame
from imageserver.formats.legacy import legacy_meta
from imageserver.imaging.contrast import Levels, choose_levels, map_contrast
from imageserver.imaging.encode import encode_jpeg, encode_png
from imageserver.imaging.geometry import View, plan_view
from imageserver.imaging.label import add_label, label_text
from imageserver.imaging.reduce import Reduced, reduce_frame
from imageserver.imaging.stats import ViewStats, view_stats


@dataclass(frozen=True)
class ViewSpec:
    """Which part of which frame to show, at what size (legacy `jpeg` geometry fields)."""

    path: Path
    frame: int = 1
    xsize: int = 1024
    ysize: int | None = None
    zoom: float = 1.0
    segcol: float = 0.0
    segrow: float = 0.0


@dataclass(frozen=True)
class Look:
    """How to show a reduced view: levels, colours, banner and JPEG quality.

    Legacy semantics: ``contrast`` (black level) ≤ 0 and ``wval`` (white level) < 0 are
    automatic; a missing wval on the wire is 0, hence the default.
    """

    contrast: int = 0
    wval: int = 0
    colormap: str = "grey"
    label: str = ""
    label_height_px: int = 0
    quality: int = 90
    image_format: str = "jpeg"
    """"jpeg" (simplejpeg, ``quality``) or "png" (lossless 8-bit RGB)."""


@dataclass(frozen=True)
class ReducedView:
    """The full-depth result of the costly step, with its statistics and legacy meta."""

    reduced: Reduced
    stats: ViewStats
    meta: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return int(self.reduced.values.nbytes + self.reduced.flags.nbytes)


@dataclass(frozen=True)
class RenderedImage:
    """An encoded image and the levels actually used (echoed as bval_used / wval_used)."""

    data: bytes
    levels: Levels
    width_px: int
    height_px: int


def plan_frame_view(frame: Frame, spec: ViewSpec) -> View:
    return plan_view(
        frame.meta.width_px,
        frame.meta.height_px,
        xsize=spec.xsize,
        ysize=spec.ysize,
        zoom=spec.zoom,
        segcol=spec.segcol,
        segrow=spec.segrow,
    )


def reduce_view(frame: Frame, spec: ViewSpec, *, fn: str | None = None) -> ReducedView:
    """Reduce one frame to the requested view at full bit depth and describe it."""
    view = plan_frame_view(frame, spec)
    reduced = reduce_frame(frame, view)
    stats = view_stats(reduced, frame.meta.beam_center_x_px, frame.meta.beam_center_y_px)
    meta = legacy_meta(frame.meta, fn=fn if fn is not None else str(spec.path), frame=frame.number)
    meta.update(stats_fields(stats))
    return ReducedView(reduced=reduced, stats=stats, meta=meta)


def stats_fields(stats: ViewStats) -> dict[str, Any]:
    """The view statistics under their legacy meta names."""
    fields: dict[str, Any] = {
        "n": stats.n,
        "mean": stats.mean,
        "rms": stats.rms,
        "stddev": stats.stddev,
        "min": stats.min,
        "max": stats.max,
        "nSaturated": stats.saturated,
    }
    if stats.spots is not None:
        fields["spots"] = stats.spots
    return fields


def render_jpeg(view: ReducedView, look: Look) -> RenderedImage:
    """Map a reduced view to 8 bits with the requested look and encode it (JPEG by default)."""
    levels = choose_levels(view.stats, look.contrast, look.wval)
    rgb = map_contrast(view.reduced, levels, look.colormap)
    if look.label_height_px > 0:
        text = label_text(
            look.label,
            int(view.meta["frame"]),
            int(view.meta["first_frame"]),
            int(view.meta["last_frame"]),
        )
        rgb = add_label(rgb, text, look.label_height_px)
    if look.image_format == "png":
        data = encode_png(rgb)
    elif look.image_format == "jpeg":
        data = encode_jpeg(rgb, look.quality)
    else:
        raise RequestError(f"unknown image format {look.image_format!r}; use jpeg or png")
    return RenderedImage(data=data, levels=levels, width_px=rgb.shape[1], height_px=rgb.shape[0])


def render_file(spec: ViewSpec, look: Look) -> tuple[RenderedImage, ReducedView]:
    """Open, reduce and render in one call: the CLI's and batch job's path (no cache)."""
    frame = open_frame(spec.path, spec.frame)
    reduced_view = reduce_view(frame, spec)
    return render_jpeg(reduced_view, look), reduced_view
