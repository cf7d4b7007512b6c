"""Stage times: recorded per thread in a worker, read as untrusted input by the manager."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from imageserver import stage_times
from imageserver.cache.renderer import CachedRenderer
from imageserver.render import Look, ViewSpec
from imageserver.sampledata.dataset import PILATUS_CBF
from imageserver.stage_times import MAX_FRAME_BYTES, StageTimes


def test_a_job_reports_its_stages_and_source() -> None:
    stage_times.begin()
    stage_times.record("decode", time.perf_counter_ns() - 3_000_000)
    stage_times.record("decode", time.perf_counter_ns() - 1_000_000)
    stage_times.note_source("file")
    times = stage_times.parse(stage_times.finish())
    assert times is not None and times.source == "file"
    assert set(times.seconds) == {"decode"}
    assert 0.004 <= times.seconds["decode"] < 1.0
    assert stage_times.finish() == b""  # recording stopped


def test_nothing_is_recorded_outside_a_job() -> None:
    stage_times.finish()
    stage_times.record("reduce", time.perf_counter_ns())
    stage_times.note_source("memory")
    assert stage_times.finish() == b""
    stage_times.begin()
    assert stage_times.finish() == b""  # a job that recorded nothing sends nothing


def test_each_thread_records_its_own_job() -> None:
    frames: dict[str, bytes] = {}

    def job(stage: str) -> None:
        stage_times.begin()
        stage_times.timed(stage, time.sleep)(0.01)
        frames[stage] = stage_times.finish()

    threads = [threading.Thread(target=job, args=(s,)) for s in ("reduce", "encode")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(json.loads(frames["reduce"])) == {"reduce"}
    assert set(json.loads(frames["encode"])) == {"encode"}


def test_a_rendered_view_times_every_stage(sample_dir: Path) -> None:
    renderer = CachedRenderer.uncached()
    spec = ViewSpec(path=sample_dir / PILATUS_CBF, xsize=256)
    stage_times.begin()
    renderer.jpeg(spec, Look(), fn=str(spec.path))
    times = stage_times.parse(stage_times.finish())
    assert times is not None
    assert set(times.seconds) == {"decode", "reduce", "contrast", "encode"}
    assert all(0 < seconds < 10 for seconds in times.seconds.values())
    assert times.source == "file"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{",
        b"[]",
        b'"decode"',
        b"\xff\xfe",
        b"[" * 100 + b"]" * 100,
        json.dumps({"decode": 1, "pad": "x" * MAX_FRAME_BYTES}).encode(),
    ],
)
def test_a_frame_that_is_not_a_small_object_is_ignored(frame: bytes) -> None:
    assert stage_times.parse(frame) is None


def test_bad_values_are_dropped_one_by_one() -> None:
    report = {
        "decode": -1,
        "reduce": 2.5,
        "contrast": True,
        "encode": 10**20,
        "unknown": 5,
        "source": "everywhere",
    }
    assert stage_times.parse(json.dumps(report).encode()) == StageTimes({}, "")
    good = {"reduce": 7_000_000, "encode": 0, "source": "shared"}
    assert stage_times.parse(json.dumps(good).encode()) == StageTimes(
        {"reduce": 0.007, "encode": 0.0}, "shared"
    )
