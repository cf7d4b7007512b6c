"""The two-step pipeline on real sample files: pixels, levels and meta that clients read."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from imageserver.config import LimitSettings
from imageserver.errors import RequestError
from imageserver.formats import open_frame
from imageserver.render import Look, ViewSpec, reduce_view, render_file, render_jpeg
from imageserver.sampledata.dataset import EIGER16M_MASTER


@pytest.fixture(scope="module")
def master(sample_dir: Path) -> Path:
    return sample_dir / EIGER16M_MASTER


def test_reduced_view_meta_has_legacy_and_stats_fields(master: Path) -> None:
    frame = open_frame(master, 2)
    view = reduce_view(frame, ViewSpec(master, frame=2, xsize=256), fn="x_master.h5")
    meta = view.meta
    assert meta["fn"] == "x_master.h5"
    assert meta["frame"] == 2
    assert (meta["first_frame"], meta["last_frame"]) == (1, 2)
    assert meta["x_pixels_in_detector"] == frame.meta.width_px
    assert meta["image_depth"] == 4
    assert meta["beam_center_x"] == pytest.approx(frame.meta.beam_center_x_px)
    values = view.reduced.values[view.reduced.flags != 1].astype(np.float64)
    assert meta["n"] == values.size
    assert meta["mean"] == pytest.approx(values.mean())
    assert meta["max"] == int(values.max())
    assert isinstance(meta["spots"], int) and meta["spots"] > 0


def test_output_keeps_detector_aspect_ratio(master: Path) -> None:
    image, reduced = render_file(ViewSpec(master, xsize=300), Look())
    frame = open_frame(master, 1)
    expected_h = round(300 * frame.meta.height_px / frame.meta.width_px)
    assert (image.width_px, image.height_px) == (300, expected_h)
    decoded = simplejpeg.decode_jpeg(image.data)
    assert decoded.shape == (expected_h, 300, 3)
    assert reduced.reduced.values.shape == (expected_h, 300)


def test_explicit_levels_are_echoed_and_auto_levels_follow_stats(master: Path) -> None:
    frame = open_frame(master, 1)
    view = reduce_view(frame, ViewSpec(master, xsize=256))
    fixed = render_jpeg(view, Look(contrast=50, wval=3))
    assert (fixed.levels.black, fixed.levels.white) == (50, 3)
    auto = render_jpeg(view, Look(contrast=0, wval=-1))
    stats = view.stats
    assert auto.levels.black == int(stats.mean + stats.stddev)
    assert auto.levels.white == max(0, int(stats.mean - stats.stddev))


def test_label_adds_exactly_its_rows(master: Path) -> None:
    frame = open_frame(master, 1)
    view = reduce_view(frame, ViewSpec(master, xsize=200))
    plain = render_jpeg(view, Look())
    labelled = render_jpeg(view, Look(label="Ü ±", label_height_px=20))
    assert labelled.height_px == plain.height_px + 20
    top = simplejpeg.decode_jpeg(labelled.data)[:20].astype(int)
    assert top.mean() > 200  # white banner with some dark text
    assert top.min() < 100


def test_absurd_sizes_are_request_errors(master: Path) -> None:
    with pytest.raises(RequestError, match="10000"):
        render_file(ViewSpec(master, xsize=20000), Look())
    with pytest.raises(RequestError, match="64"):
        render_file(ViewSpec(master, xsize=256, zoom=100), Look())


ROOMY = LimitSettings(max_xsize_px=20000, max_zoom=128.0, max_label_height_px=128)
"""Every limit the pipeline applies, raised above its default."""


def test_configured_limits_reach_planning_and_the_banner(master: Path) -> None:
    """What the parser accepts under a configuration, the pipeline renders under it too."""
    spec = ViewSpec(master, xsize=12000, ysize=8, zoom=100, segcol=40, segrow=40)
    image, reduced = render_file(spec, Look(label="wide", label_height_px=100), limits=ROOMY)
    assert (image.width_px, image.height_px) == (12000, 8 + 100)
    assert reduced.reduced.values.shape == (8, 12000)
    assert reduced.reduced.view.zoom == 100.0
    decoded = simplejpeg.decode_jpeg(image.data)
    assert decoded.shape == (108, 12000, 3)
    assert decoded[20:100].min() > 200  # the banner's rows below the text: white


@pytest.mark.parametrize(
    ("spec", "look", "message"),
    [
        (
            {"xsize": 12000, "ysize": 8},
            {},
            "xsize 12000 is above the limit of 10000 pixels ([limits] max_xsize_px)",
        ),
        ({"xsize": 64, "zoom": 100}, {}, "zoom 100 is above the limit of 64 ([limits] max_zoom)"),
        (
            {"xsize": 64},
            {"label_height_px": 100},
            "label height 100 is outside 0..64 pixels ([limits] max_label_height_px)",
        ),
    ],
)
def test_default_limits_refuse_what_roomy_ones_allow(
    master: Path, spec: dict[str, float], look: dict[str, int], message: str
) -> None:
    view_spec, view_look = ViewSpec(master, **spec), Look(**look)  # type: ignore[arg-type]
    with pytest.raises(RequestError, match=re.escape(message)):
        render_file(view_spec, view_look)
    assert render_file(view_spec, view_look, limits=ROOMY)[0].data


def test_reduce_and_render_steps_take_the_limits_separately(master: Path) -> None:
    """The cache calls the two steps apart; each must apply the limits it is given."""
    frame = open_frame(master, 1)
    wide = LimitSettings(max_xsize_px=20000)
    assert reduce_view(frame, ViewSpec(master, xsize=12000, ysize=8), limits=wide).nbytes
    with pytest.raises(RequestError, match="xsize 12000"):
        reduce_view(frame, ViewSpec(master, xsize=12000, ysize=8))
    view = reduce_view(frame, ViewSpec(master, xsize=64))
    tall = Look(label_height_px=100)
    banner = render_jpeg(view, tall, limits=LimitSettings(max_label_height_px=128))
    assert banner.height_px == view.reduced.values.shape[0] + 100
    with pytest.raises(RequestError, match="label height 100"):
        render_jpeg(view, tall)
