"""The two-step pipeline on real sample files: pixels, levels and meta that clients read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simplejpeg

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
