"""The two-step pipeline: frame → full-depth view (costly, cacheable) → 8-bit image (cheap).

`reduce_view` does the expensive part once per (file, frame, geometry) and returns a
`ReducedView` holding everything a later contrast, colour map or label needs; `render_jpeg`
maps it to 8 bits and encodes it. The cache tier stores `ReducedView`s, so a new contrast
costs only the second step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imageserver import stage_times
from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import RequestError
from imageserver.formats import open_source
from imageserver.formats.base import STRIP_ELEMENTS, AnyFrame, FrameMeta
from imageserver.formats.legacy import legacy_meta
from imageserver.imaging.colormaps import get_colormap
from imageserver.imaging.contrast import Levels, choose_levels, map_contrast_planes
from imageserver.imaging.encode import encode_jpeg_ycc, encode_png
from imageserver.imaging.geometry import View, plan_view
from imageserver.imaging.label import check_label_height, label_text, render_banner
from imageserver.imaging.reduce import Reduced, RowSource, reduce_frame
from imageserver.imaging.stats import ViewStats, view_stats
from imageserver.memo import IdentityMemo


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
    chroma: str = "420"
    """JPEG chroma: "420" (fast, small; overload pixels keep their colour) or "444" (exact)."""
    levels: str = "legacy"
    """Automatic levels: "legacy" (mean ± stddev) or "percentile" (`imaging.contrast`)."""


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
    window: tuple[float, float, float, float]
    """The source pixels the image shows (`source_window`), echoed so a client can map it."""


def plan_frame_view(
    frame: AnyFrame, spec: ViewSpec, *, limits: LimitSettings = DEFAULT_LIMITS
) -> View:
    """The view ``spec`` asks for on this frame, within ``limits`` (see `plan_view`)."""
    return plan_view(
        frame.meta.width_px,
        frame.meta.height_px,
        xsize=spec.xsize,
        ysize=spec.ysize,
        zoom=spec.zoom,
        segcol=spec.segcol,
        segrow=spec.segrow,
        limits=limits,
    )


def source_window(view: View) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the source-pixel rectangle a view shows, edges in source pixel
    coordinates, unclipped (a tile panned off the frame shows masked pixels there)."""
    return (
        view.x0_px,
        view.y0_px,
        view.x0_px + view.window_w_px,
        view.y0_px + view.window_h_px,
    )


def view_levels(view: ReducedView, look: Look) -> Levels:
    """The levels ``look`` gives this view: requested ones, automatic ones for the rest."""
    return choose_levels(
        view.stats, look.contrast, look.wval, mode=look.levels, reduced=view.reduced
    )


def reduce_view(
    frame: AnyFrame,
    spec: ViewSpec,
    *,
    fn: str | None = None,
    limits: LimitSettings = DEFAULT_LIMITS,
    rows: RowSource | None = None,
    strip_elements: int = STRIP_ELEMENTS,
) -> ReducedView:
    """Reduce one frame to the requested view at full bit depth and describe it (``rows``
    and ``strip_elements``: see `reduce_frame`); its time is the "reduce" stage."""
    start_ns = time.perf_counter_ns()
    view = plan_frame_view(frame, spec, limits=limits)
    reduced = reduce_frame(frame, view, rows=rows, strip_elements=strip_elements)
    stats = view_stats(reduced, frame.meta.beam_center_x_px, frame.meta.beam_center_y_px)
    meta = {
        **series_meta(frame.meta),
        "frame": frame.number,
        "fn": fn if fn is not None else str(spec.path),
    }
    meta.update(stats_fields(stats))
    stage_times.record("reduce", start_ns)
    return ReducedView(reduced=reduced, stats=stats, meta=meta)


def _legacy_series_meta(meta: FrameMeta) -> dict[str, Any]:
    return legacy_meta(meta, fn="", frame=0)  # each view sets its own fn and frame


series_meta: IdentityMemo[FrameMeta, dict[str, Any]] = IdentityMemo(_legacy_series_meta)
"""Legacy meta made once for all views of a frame (0.8 ms with an Eiger series' arrays).
Keyed by the FrameMeta, which is small: keeping a Frame would keep its pixels."""


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


def render_jpeg(
    view: ReducedView, look: Look, *, limits: LimitSettings = DEFAULT_LIMITS
) -> RenderedImage:
    """Map a reduced view to 8 bits with the requested look and encode it (JPEG by default).

    ``limits.max_label_height_px`` bounds the banner; the view itself was bounded when it
    was planned. Times the "contrast" (levels, mapping, banner) and "encode" stages.
    """
    start_ns = time.perf_counter_ns()
    levels = view_levels(view, look)
    if look.image_format not in ("jpeg", "png"):
        raise RequestError(f"unknown image format {look.image_format!r}; use jpeg or png")
    banner_px = look.label_height_px
    check_label_height(banner_px, limits)
    space = "ycc" if look.image_format == "jpeg" else "rgb"
    planes = map_contrast_planes(
        view.reduced, levels, look.colormap, space=space, top_rows=banner_px
    )
    if banner_px > 0:
        text = label_text(
            look.label,
            int(view.meta["frame"]),
            int(view.meta["first_frame"]),
            int(view.meta["last_frame"]),
        )
        banner = render_banner(text, planes.shape[2], banner_px)
        planes[0, :banner_px] = banner
        # White and black are neutral: chroma 128 in YCbCr, the same grey in every RGB plane.
        planes[1:, :banner_px] = 128 if space == "ycc" else banner
    stage_times.record("contrast", start_ns)
    start_ns = time.perf_counter_ns()
    if space == "ycc":
        keep = get_colormap(look.colormap).overload_chroma
        data = encode_jpeg_ycc(planes, look.quality, subsampling=look.chroma, keep_chroma=keep)
    else:
        data = encode_png(np.ascontiguousarray(np.moveaxis(planes, 0, -1)))
    stage_times.record("encode", start_ns)
    return RenderedImage(
        data=data,
        levels=levels,
        width_px=planes.shape[2],
        height_px=planes.shape[1],
        window=source_window(view.reduced.view),
    )


def render_file(
    spec: ViewSpec, look: Look, *, limits: LimitSettings = DEFAULT_LIMITS
) -> tuple[RenderedImage, ReducedView]:
    """Open, reduce and render in one call: the CLI's and batch job's path (no cache)."""
    frame = open_source(spec.path, spec.frame, limits=limits)
    reduced_view = reduce_view(frame, spec, limits=limits)
    return render_jpeg(reduced_view, look, limits=limits), reduced_view
