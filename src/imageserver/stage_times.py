"""Where a worker's time went for one request, measured in the worker, observed by the manager.

A worker has no metrics server of its own (many per machine, each as its user), so it
measures each stage of the render path (decode, reduce, contrast, encode) and which cache
source answered, and sends them with its reply as one small JSON frame (`service.link`).
The manager reads that frame as untrusted input: bounded in size, unknown names and
absurd values ignored (`parse`), and observes the rest (`metrics.observe_stage_times`).

Recording is per thread (a worker runs several jobs at once) and costs two
``perf_counter_ns`` calls and a dict update per stage; outside a job begun with `begin` (the
command line, tests) `record` does nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

STAGES = ("decode", "reduce", "contrast", "encode")
"""decode: the file read into a frame (an Eiger frame's chunks stay compressed until reduce);
reduce: the frame reduced to the view with its statistics; contrast: levels, colour map and
banner mapped to 8-bit planes; encode: JPEG or PNG encoding."""
SOURCES = ("image", "memory", "shared", "frame", "file")
"""Where a renderer's answer came from, cheapest first: the encoded image, the reduced view
in this process or in Redis, a reduction of a frame held in memory, or a decode of the file
(`imageserver.cache.renderer.SOURCES` is this tuple; it lives here so the manager reads it
without the render stack)."""
MAX_FRAME_BYTES = 256
"""A timings frame is ~100 bytes; a longer one is not read."""
MAX_STAGE_NS = 3600 * 10**9
"""A stage longer than an hour is a worker's lie or a broken clock: ignored."""

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class StageTimes:
    """What one reply reported: seconds per stage, and the cache source ("" when none)."""

    seconds: dict[str, float] = field(default_factory=dict)
    source: str = ""


_local = threading.local()


def begin() -> None:
    """Start recording this thread's job: stages recorded before are forgotten."""
    _local.ns = {}
    _local.source = ""


def record(stage: str, start_ns: int) -> None:
    """Add the time since ``start_ns`` (a `time.perf_counter_ns` reading) to ``stage``."""
    spent = getattr(_local, "ns", None)
    if spent is not None:
        spent[stage] = spent.get(stage, 0) + time.perf_counter_ns() - start_ns


def note_source(source: str) -> None:
    """Which cache source answered this thread's job (the last one noted wins)."""
    if getattr(_local, "ns", None) is not None:
        _local.source = source


def timed(stage: str, function: Callable[P, R]) -> Callable[P, R]:
    """``function`` with its every call recorded as ``stage``."""

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        start_ns = time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            record(stage, start_ns)

    return call


def finish() -> bytes:
    """The frame to send with this thread's reply (b"" when nothing was recorded); stops
    recording."""
    spent = getattr(_local, "ns", None)
    source = getattr(_local, "source", "")
    _local.ns, _local.source = None, ""
    if not spent and not source:
        return b""
    report: dict[str, int | str] = dict(spent or {})
    if source:
        report["source"] = source
    return json.dumps(report, separators=(",", ":")).encode()


def parse(frame: bytes) -> StageTimes | None:
    """A worker's timings frame, or None when it is empty, too long or not a JSON object;
    unknown stages, bad values and unknown sources are dropped one by one."""
    if not frame or len(frame) > MAX_FRAME_BYTES:
        return None
    try:
        report = json.loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(report, dict):
        return None
    seconds = {
        stage: value / 1e9
        for stage in STAGES
        if type(value := report.get(stage)) is int and 0 <= value <= MAX_STAGE_NS
    }
    source = report.get("source")
    return StageTimes(seconds, source if source in SOURCES else "")
