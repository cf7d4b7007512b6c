"""A worker's job boundary: deadlines, foreign exceptions and memory, each one typed reply."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imageserver.analysis import AnalysisParams, analyse_file
from imageserver.cache.keys import Scope
from imageserver.cache.memory import MemoryCache
from imageserver.cache.renderer import CachedRenderer, entry_nbytes
from imageserver.formats import open_source
from imageserver.imaging.contrast import choose_levels
from imageserver.render import ViewSpec, reduce_view
from imageserver.sampledata.dataset import EIGER4M16_STEM, EIGER16M_MASTER, MARCCD_LE, PILATUS_CBF
from imageserver.service import jobs, link
from imageserver.service.reply import Failure, Reply, Success
from imageserver.service.worker import run_job


class Handler:
    def __init__(self, outcome: Reply | BaseException) -> None:
        self.outcome = outcome
        self.calls = 0

    def __call__(self, payload: bytes) -> Reply:
        self.calls += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def release_idle(self) -> None:
        pass


def job(deadline_in_s: float = 10.0) -> link.Job:
    return link.Job(b"id", time.monotonic_ns() + int(deadline_in_s * 1e9), b"{}")


def test_a_job_whose_deadline_passed_while_queued_is_not_run() -> None:
    handler = Handler(Success((b"x",)))
    reply = run_job(handler, job(-0.001), 0)
    assert handler.calls == 0
    assert isinstance(reply, Failure) and reply.code == "timeout"


def test_a_foreign_exception_is_an_internal_error_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Handler(ValueError("SIZE1=-4 secret detail"))
    with caplog.at_level(logging.ERROR):
        reply = run_job(handler, job(), 0)
    assert isinstance(reply, Failure) and reply.code == "internal"
    assert "secret detail" not in reply.message and "ValueError" not in reply.message
    reference = reply.message.split("reference ")[1].split(")")[0]
    assert f"reference {reference}" in caplog.text and "secret detail" in caplog.text


def test_running_out_of_memory_fails_the_request_with_the_limit() -> None:
    reply = run_job(Handler(MemoryError()), job(), 512 << 20)
    assert isinstance(reply, Failure) and reply.code == "out_of_memory"
    assert "512 MiB" in reply.message


# -- jobs.handle: the wire requests added to the legacy set (docs/http-api.md) ----------------


def handled(fields: dict[str, Any], renderer: CachedRenderer | None = None) -> Reply:
    payload = json.dumps({"pid": "token", "esaf": 0, **fields}).encode()
    return jobs.handle(payload, renderer=renderer)


def succeeded(fields: dict[str, Any], renderer: CachedRenderer | None = None) -> Success:
    reply = handled(fields, renderer)
    assert isinstance(reply, Success), reply
    return reply


def raw_view(sample_dir: Path, name: str, **spec: Any) -> Any:
    path = sample_dir / name
    return reduce_view(open_source(path, spec.pop("frame", 1)), ViewSpec(path=path, **spec))


@pytest.mark.parametrize(
    ("name", "dtype"),
    [(EIGER16M_MASTER, "uint32"), (f"{EIGER4M16_STEM}_master.h5", "uint16"), (MARCCD_LE, "uint32")],
)
def test_raw_is_the_reduced_view_values_then_flags(sample_dir: Path, name: str, dtype: str) -> None:
    fields = {"type": "jpeg", "fn": str(sample_dir / name), "xsize": 300, "format": "raw"}
    job, meta, data = succeeded({**fields, "contrast": 0, "wval": -1}).parts
    view = raw_view(sample_dir, name, xsize=300)
    values, flags = view.reduced.values, view.reduced.flags
    height, width = values.shape
    echo = json.loads(job)
    assert values.dtype == np.dtype(dtype)
    sent = np.dtype(np.uint16) if int(values.max()) <= 0xFFFF else values.dtype  # narrowed
    assert echo["raw"] == {"dtype": sent.name, "height": height, "width": width}
    planes = values.astype(sent.newbyteorder("<")).view(np.uint8).reshape(-1, sent.itemsize)
    assert data == planes.T.tobytes() + flags.tobytes()
    assert set(np.unique(flags).tolist()) <= set(jobs.RAW_FLAGS.values())
    assert jobs.RAW_FLAGS == {"usable": 0, "masked": 1, "saturated": 2}
    legacy = choose_levels(view.stats, 0, -1)
    assert (echo["bval_used"], echo["wval_used"]) == (legacy.black, legacy.white)
    assert json.loads(meta)["mean"] == view.stats.mean
    frame = open_source(sample_dir / name, 1).meta
    assert echo["window"] == [0.0, 0.0, frame.width_px, frame.height_px]


def test_raw_echoes_the_percentile_levels(sample_dir: Path) -> None:
    fields = {"type": "jpeg", "fn": str(sample_dir / MARCCD_LE), "xsize": 256}
    job = succeeded({**fields, "format": "raw", "levels": "percentile", "wval": -1}).parts[0]
    view = raw_view(sample_dir, MARCCD_LE, xsize=256)
    usable = view.reduced.values[view.reduced.flags == 0]
    white, black = np.percentile(usable, [10, 99.5], method="lower")
    echo = json.loads(job)
    assert (echo["wval_used"], echo["bval_used"]) == (int(white), max(int(black), int(white) + 1))


def test_raw_reuses_the_cached_reduced_view(sample_dir: Path, tmp_path: Path) -> None:
    shutil.copy(sample_dir / MARCCD_LE, tmp_path / MARCCD_LE)
    renderer = cached_renderer(tmp_path)
    fields = {"type": "jpeg", "fn": str(tmp_path / MARCCD_LE), "xsize": 256}
    succeeded(fields, renderer)
    before = dict(renderer.counts.by_source)
    succeeded({**fields, "format": "raw"}, renderer)
    assert renderer.counts.by_source["memory"] == before["memory"] + 1
    assert renderer.counts.by_source["file"] == before["file"]


def test_png_decodes_to_the_view_size(sample_dir: Path) -> None:
    fields = {"type": "jpeg", "fn": str(sample_dir / MARCCD_LE), "xsize": 200, "format": "png"}
    job, _, data = succeeded(fields).parts
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (200, 200)
    assert json.loads(job)["window"] == [0.0, 0.0, 512.0, 512.0]


def test_png_with_a_banner_and_a_zoomed_window(sample_dir: Path) -> None:
    fields = {
        "type": "jpeg", "fn": str(sample_dir / MARCCD_LE), "xsize": 128, "format": "png",
        "zoom": 4, "segcol": 1, "segrow": 2, "label": "x", "labelHeight": 16,
    }  # fmt: skip
    job, _, data = succeeded(fields).parts
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (128, 128 + 16)
    assert json.loads(job)["window"] == [128.0, 256.0, 256.0, 384.0]


def test_jpeg_echo_has_the_window(sample_dir: Path) -> None:
    fields = {"type": "jpeg", "fn": str(sample_dir / EIGER16M_MASTER), "xsize": 256}
    job, _, data = succeeded({**fields, "zoom": 2, "segcol": 1}).parts
    assert data.startswith(b"\xff\xd8")
    assert json.loads(job)["window"] == [1034.0, 0.0, 2068.0, 531.0]


def test_levels_modes_are_separate_cached_images(sample_dir: Path, tmp_path: Path) -> None:
    shutil.copy(sample_dir / MARCCD_LE, tmp_path / MARCCD_LE)
    renderer = cached_renderer(tmp_path)
    fields = {"type": "jpeg", "fn": str(tmp_path / MARCCD_LE), "xsize": 256, "wval": -1}
    images = {}
    for levels in ("legacy", "percentile", "legacy", "percentile"):
        job, _, data = succeeded({**fields, "levels": levels}, renderer).parts
        echo = json.loads(job)
        images.setdefault(levels, set()).add((data, echo["bval_used"], echo["wval_used"]))
    assert len(images["legacy"]) == len(images["percentile"]) == 1
    assert images["legacy"] != images["percentile"]
    view = raw_view(tmp_path, MARCCD_LE, xsize=256)
    usable = view.reduced.values[view.reduced.flags == 0]
    ((_, black, white),) = images["percentile"]
    assert (white, black) == tuple(
        int(v) for v in np.percentile(usable, [10, 99.5], method="lower")
    )
    png = succeeded({**fields, "format": "png"}, renderer).parts[2]
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"type": "jpeg", "fn": "/x", "format": "gif"}, "field 'format' must be one of"),
        ({"type": "jpeg", "fn": "/x", "format": 3}, "field 'format' must be a string"),
        ({"type": "jpeg", "fn": "/x", "levels": "auto"}, "field 'levels' must be one of"),
        ({"type": "list"}, "Missing directory (dir) for a list request"),
        ({"type": "latest", "dir": ""}, "Missing directory (dir) for a latest request"),
        ({"type": "list", "dir": 5}, "field 'dir' must be a string"),
        ({"type": "list", "dir": "/a\x00b"}, "field 'dir' contains a NUL"),
    ],
)
def test_bad_new_fields_are_bad_requests(fields: dict[str, Any], words: str) -> None:
    reply = handled(fields)
    assert isinstance(reply, Failure) and reply.code == "bad_request"
    assert words in reply.message


def test_a_failed_raw_or_png_has_no_grey_jpeg_fallback(tmp_path: Path) -> None:
    fields = {"type": "jpeg", "fn": str(tmp_path / "absent.cbf"), "xsize": 64}
    for image_format, has_fallback in (("jpeg", True), ("png", False), ("raw", False)):
        reply = handled({**fields, "format": image_format})
        assert isinstance(reply, Failure) and reply.code == "file_missing"
        assert bool(reply.fallback) is has_fallback


def test_list_replies_with_the_listing(sample_dir: Path) -> None:
    job, listing = succeeded({"type": "list", "dir": str(sample_dir), "tag": "t"}).parts
    assert json.loads(job) == {"pid": "token", "esaf": 0, "type": "list",
                               "dir": str(sample_dir), "tag": "t"}  # fmt: skip
    body = json.loads(listing)
    assert set(body) == {"dir", "parent", "dirs", "datasets", "truncated"}
    names = [entry["name"] for entry in body["datasets"]]
    assert EIGER16M_MASTER in names and "pilatus6m_####.cbf" in names
    assert not any("_data_" in name for name in names)
    master = next(entry for entry in body["datasets"] if entry["name"] == EIGER16M_MASTER)
    assert (master["kind"], master["first_frame"], master["last_frame"]) == ("eiger", 1, 2)


def test_latest_replies_with_the_newest_dataset(tmp_path: Path) -> None:
    for number, mtime in ((1, 10.0), (2, 30.0)):
        path = tmp_path / f"r_{number:04d}.cbf"
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    _, found = succeeded({"type": "latest", "dir": str(tmp_path)}).parts
    body = json.loads(found)
    assert body["frame"] == 2 and body["dataset"]["template"] == str(tmp_path / "r_####.cbf")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert json.loads(succeeded({"type": "latest", "dir": str(empty)}).parts[1]) == {
        "dataset": None,
        "frame": None,
    }


def test_list_of_a_missing_directory_is_file_missing(tmp_path: Path) -> None:
    reply = handled({"type": "list", "dir": str(tmp_path / "nope")})
    assert isinstance(reply, Failure) and reply.code == "file_missing" and not reply.fallback


def cached_renderer(home: Path) -> CachedRenderer:
    memory: MemoryCache[Any] = MemoryCache(64 << 20, entry_nbytes)
    return CachedRenderer(Scope.for_worker(os.getgid(), str(home)), memory)


def test_whoami_reaching_a_worker_is_refused_not_crashed() -> None:
    reply = jobs.handle(b'{"type":"whoami","pid":"p"}')
    assert isinstance(reply, Failure)
    assert reply.code == "bad_request"


def test_raw_keeps_32_bits_only_where_a_value_needs_them(sample_dir: Path) -> None:
    view = raw_view(sample_dir, EIGER16M_MASTER, xsize=64).reduced
    assert jobs.raw_dtype(view) == np.uint16 or int(view.values.max()) > 0xFFFF
    wide = dataclasses.replace(view, values=view.values.astype(np.uint32))
    wide.values[0, 0] = 70000
    assert jobs.raw_dtype(wide) == np.uint32
    data = jobs.raw_bytes(wide)
    n = wide.values.size
    first = [data[plane * n] for plane in range(4)]  # pixel 0's bytes, one per plane
    assert int.from_bytes(bytes(first), "little") == 70000


def test_analysis_is_computed_once_then_served_from_memory(sample_dir: Path) -> None:
    renderer = CachedRenderer(
        Scope.for_worker(os.getgid(), os.getcwd()), MemoryCache(256 << 20, entry_nbytes)
    )
    fields = {"type": "analysis", "fn": str(sample_dir / PILATUS_CBF), "d_max": 40}
    first = succeeded(fields, renderer).parts[1]
    assert renderer.counts.by_source["file"] >= 1
    served = renderer.counts.by_source["memory"]
    assert succeeded(fields, renderer).parts[1] == first
    assert renderer.counts.by_source["memory"] == served + 1
    result = json.loads(first)
    expected = analyse_file(sample_dir / PILATUS_CBF, 1, AnalysisParams(d_max=40)).to_json()
    assert result == json.loads(json.dumps(expected))
    other = json.loads(succeeded({**fields, "d_max": 10}, renderer).parts[1])
    assert other["n_spots_total"] <= result["n_spots_total"]  # a separate entry, fewer pixels
