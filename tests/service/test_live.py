"""Live data in a worker: real inotify watches on real files, a real renderer, real threads.

The pure parts (neighbours, dataset groups, the background queue's slots) are tested on their
own; the rest writes CBFs into a directory and appends frames to an Eiger data file in SWMR
mode, as a detector does, and checks what the worker prepared and what `latest` answers.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imageserver.cache.keys import Scope
from imageserver.cache.memory import MemoryCache
from imageserver.cache.renderer import CachedRenderer, entry_nbytes
from imageserver.config import LimitSettings, LiveSettings
from imageserver.formats.datasets import dataset_group, latest_dataset
from imageserver.render import Look, ViewSpec
from imageserver.sampledata.cbf import write_pilatus_cbf
from imageserver.sampledata.eiger import LiveEigerWriter
from imageserver.sampledata.pattern import centred_geometry
from imageserver.service.background import (
    LIVE,
    PREFETCH,
    BackgroundQueue,
    allow_priority_back,
)
from imageserver.service.jobs import Jobs
from imageserver.service.live import LiveData, Prepared
from imageserver.service.newest import WatchedListing
from imageserver.service.prefetch import neighbours
from imageserver.service.reply import Success
from imageserver.service.watcher import Change, DirectoryEvent, DirectoryWatcher

SMALL_EIGER = centred_geometry(1028, 512, 75e-6)


def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- pure parts ------------------------------------------------------------------------------


def test_neighbours_of_a_run_keep_the_digit_count() -> None:
    near = neighbours("/d/x_1_00042.cbf", 1)
    assert near.frames == (("/d/x_1_00043.cbf", 1), ("/d/x_1_00041.cbf", 1))
    assert near.series == neighbours("/d/x_1_00007.cbf", 1).series
    assert neighbours("/d/x_0.cbf", 1).frames == (("/d/x_1.cbf", 1),)
    assert neighbours("/d/x_99.cbf", 1).frames == (("/d/x_98.cbf", 1),)  # no x_100.cbf


def test_neighbours_of_an_eiger_frame_are_in_the_same_file() -> None:
    near = neighbours("/d/s_master.h5", 1)
    assert near.frames == (("/d/s_master.h5", 2),)
    assert neighbours("/d/s_master.h5", 7).frames == (("/d/s_master.h5", 8), ("/d/s_master.h5", 6))
    assert near.series != neighbours("/d/t_master.h5", 1).series


def test_dataset_groups_put_a_series_files_together() -> None:
    assert dataset_group("s_master.h5") == dataset_group("s_data_000003.h5") == ("eiger", "s")
    assert dataset_group("x_0001.cbf") == dataset_group("x_0999.cbf.bz2"[:-4])
    assert dataset_group("x_0001.cbf") != dataset_group("x_001.cbf")
    assert dataset_group(".x_0001.cbf") is None
    assert dataset_group("notes.txt") is None
    assert dataset_group("image.tif") == ("file", "image.tif")


def test_background_queue_keeps_only_the_newest_task_per_slot() -> None:
    queue = BackgroundQueue()
    ran: list[str] = []
    gate = threading.Event()
    try:
        with queue.user_request():  # nothing starts while a request runs
            for number in range(5):
                queue.put(LIVE, "/dir", [lambda n=number: ran.append(f"live {n}")])
            queue.put(PREFETCH, "series", [lambda: ran.append("old place")])
            queue.put(PREFETCH, "series", [lambda: ran.append("next"), lambda: ran.append("prev")])
            queue.put(LIVE, "/other", [gate.wait])
            time.sleep(0.05)
            assert ran == []
            assert queue.pending(LIVE) == {"/dir": 1, "/other": 1}
        gate.set()
        assert queue.wait_idle(5)
        assert ran == ["live 4", "next", "prev"]
    finally:
        queue.close()


def test_background_queue_caps_the_rate_of_a_slot_and_runs_the_newest() -> None:
    """A detector at 100 Hz in one directory, a cap of 10 per second: about 10 reductions in
    a second, each of the newest frame waiting; another directory is not held back."""
    queue = BackgroundQueue(min_interval_s={LIVE: 0.1})
    ran: list[tuple[str, int, float]] = []
    started = time.monotonic()
    try:
        for frame in range(100):
            queue.put(LIVE, "/fast", [lambda f=frame: ran.append(("/fast", f, time.monotonic()))])
            if frame == 50:
                queue.put(LIVE, "/other", [lambda: ran.append(("/other", 0, time.monotonic()))])
            time.sleep(0.01)
        assert queue.wait_idle(5)
        fast = [(frame, at) for where, frame, at in ran if where == "/fast"]
        assert 8 <= len(fast) <= 13, fast
        assert all(b - a >= 0.099 for (_, a), (_, b) in itertools.pairwise(fast))
        assert fast[-1][0] == 99  # the last frame is never skipped
        assert fast[0][1] - started < 0.05  # the first one at once
        assert [where for where, _, _ in ran].count("/other") == 1
    finally:
        queue.close()


def test_a_request_hands_the_running_task_its_priority_back() -> None:
    """The request may wait for that very task (single-flight): it must not wait behind a
    lowered thread; the next task is lowered again."""
    queue = BackgroundQueue(nice_increment=10)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []
    started, release = threading.Event(), threading.Event()

    def task() -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))
        started.set()
        release.wait(5)
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))

    try:
        queue.put(LIVE, "a", [task])
        assert started.wait(5)
        with queue.user_request():
            release.set()
            assert queue.wait_idle(5)
        queue.put(LIVE, "b", [lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0))])
        assert queue.wait_idle(5)
        assert seen == [min(19, base + 10), base, min(19, base + 10)]
    finally:
        queue.close()


def as_nobody(probe: Callable[[], bytes], *, allow_back: bool) -> bytes:
    """What ``probe`` says in a child that became an unprivileged user, as a worker does."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (reports through the pipe)
        try:
            if allow_back:
                allow_priority_back()
            os.setgid(65534)
            os.setuid(65534)
            verdict = probe()
        except Exception as exc:
            verdict = repr(exc).encode()
        os.write(write, verdict)
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read, "rb") as answer:
        return answer.read()


def _may_raise_the_nice_limit() -> bool:
    soft, hard = resource.getrlimit(resource.RLIMIT_NICE)
    try:
        resource.setrlimit(resource.RLIMIT_NICE, (soft, min(40, hard + 1)))
    except (OSError, ValueError):
        return False
    resource.setrlimit(resource.RLIMIT_NICE, (soft, hard))
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_thread_that_could_not_come_back_is_not_lowered() -> None:
    """Unprivileged without RLIMIT_NICE: lowering is one-way, so the thread only yields."""

    def probe() -> bytes:
        queue = BackgroundQueue(nice_increment=10)
        seen: list[int] = []
        queue.put(LIVE, "a", [lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0))])
        queue.wait_idle(5)
        queue.close()
        return str(seen == [os.getpriority(os.PRIO_PROCESS, 0)]).encode()

    resource.setrlimit(resource.RLIMIT_NICE, (0, resource.getrlimit(resource.RLIMIT_NICE)[1]))
    assert as_nobody(probe, allow_back=False) == b"True"


@pytest.mark.skipif(
    os.geteuid() != 0 or not _may_raise_the_nice_limit(),
    reason="needs root with CAP_SYS_RESOURCE (a container may withhold it)",
)
def test_a_worker_may_raise_its_lowered_thread_back_to_its_own_priority_only() -> None:
    """RLIMIT_NICE set before the privilege drop: back to the worker's priority, not above."""

    def probe() -> bytes:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, base + 10)
        os.setpriority(os.PRIO_PROCESS, 0, base)  # back: allowed
        try:
            os.setpriority(os.PRIO_PROCESS, 0, base - 1)  # above: refused
        except PermissionError:
            return b"ok"
        return b"raised above"

    assert as_nobody(probe, allow_back=True) == b"ok"


def test_background_queue_survives_a_failing_task() -> None:
    queue = BackgroundQueue()
    ran: list[int] = []
    try:
        queue.put(LIVE, "a", [lambda: 1 / 0, lambda: ran.append(1)])  # type: ignore[func-returns-value]
        assert queue.wait_idle(5)
        assert ran == [1] and queue.failed == 1
    finally:
        queue.close()


def test_background_thread_runs_at_lower_priority() -> None:
    queue = BackgroundQueue(nice_increment=5)
    seen: list[int] = []
    try:
        queue.put(LIVE, "a", [lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0))])
        assert queue.wait_idle(5)
        assert seen == [min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)]
    finally:
        queue.close()


# -- watches on real directories ------------------------------------------------------------


@pytest.fixture(scope="module")
def cbf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_pilatus_cbf(tmp_path_factory.mktemp("cbf") / "frame.cbf")
    return path.read_bytes()


def write_frame(path: Path, data: bytes) -> float:
    """As a detector does: write the file and close it; the time it was closed."""
    with open(path, "wb") as stream:
        stream.write(data)
    return time.monotonic()


def test_watcher_merges_events_and_ends_on_deletion(tmp_path: Path) -> None:
    events: list[DirectoryEvent] = []
    watcher = DirectoryWatcher(events.extend, max_dirs=2, idle_s=60)
    try:
        directory = tmp_path / "d"
        directory.mkdir()
        assert watcher.watch(str(directory))
        assert not watcher.watch(str(tmp_path / "missing"))
        with open(directory / "x_0001.cbf", "wb") as stream:
            for _ in range(50):
                stream.write(b"x" * 100)
                stream.flush()
        wait_for(lambda: events, what="an event")
        time.sleep(0.1)
        named = [e for e in events if e.name == "x_0001.cbf"]
        assert named[-1].change is Change.WRITTEN and len(named) < 20  # 51 events unmerged
        shutil.rmtree(directory)
        wait_for(lambda: any(e.change is Change.GONE for e in events), what="the watch's end")
        assert watcher.watched() == []
    finally:
        watcher.close()


def test_watcher_bounds_and_expires_its_watches(tmp_path: Path) -> None:
    events: list[DirectoryEvent] = []
    now = [0.0]
    watcher = DirectoryWatcher(events.extend, max_dirs=2, idle_s=10, clock=lambda: now[0])
    try:
        dirs = [tmp_path / name for name in "abc"]
        for directory in dirs:
            directory.mkdir()
        watcher.watch(str(dirs[0]))
        watcher.watch(str(dirs[1]))
        watcher.watch(str(dirs[0]))  # asked again: b is now the least recent
        watcher.watch(str(dirs[2]))
        assert watcher.watched() == [str(dirs[0]), str(dirs[2])]
        assert DirectoryEvent(str(dirs[1]), "", Change.GONE) in events
        now[0] = 11.0
        wait_for(lambda: not watcher.watched(), timeout_s=5, what="idle watches to go")
    finally:
        watcher.close()


def test_watched_listing_answers_as_a_scan(tmp_path: Path, cbf_bytes: bytes) -> None:
    for number in (1, 2):
        write_frame(tmp_path / f"run_{number:04d}.cbf", cbf_bytes)
    (tmp_path / "notes.txt").write_text("not a frame")
    listing = WatchedListing(str(tmp_path))
    listing.seed()
    assert listing.latest() == latest_dataset(tmp_path)
    time.sleep(0.01)
    write_frame(tmp_path / "run_0003.cbf", cbf_bytes)
    listing.update("run_0003.cbf")
    dataset, frame = listing.latest()
    assert (dataset, frame) == latest_dataset(tmp_path)
    assert frame == 3 and dataset is not None and dataset.frames == 3
    (tmp_path / "run_0003.cbf").unlink()
    listing.update("run_0003.cbf")
    assert listing.latest()[1] == latest_dataset(tmp_path)[1] == 2


def make_renderer() -> CachedRenderer:
    scope = Scope.for_worker(os.getgid(), os.getcwd())
    return CachedRenderer(scope, MemoryCache(1 << 30, entry_nbytes), limits=LimitSettings())


@pytest.fixture
def live() -> Iterator[tuple[LiveData, list[Prepared]]]:
    prepared: list[Prepared] = []
    data = LiveData(LiveSettings(), make_renderer(), on_ready=prepared.append)
    try:
        yield data, prepared
    finally:
        data.close()


def ask(jobs: Jobs, **request: object) -> Success:
    reply = jobs(json.dumps({"pid": "p", **request}).encode())
    assert isinstance(reply, Success), reply
    return reply


def test_a_new_cbf_is_ready_before_it_is_asked_for(
    tmp_path: Path, cbf_bytes: bytes, live: tuple[LiveData, list[Prepared]]
) -> None:
    data, prepared = live
    jobs = Jobs(renderer=data.renderer, live=data)
    write_frame(tmp_path / "run_0001.cbf", cbf_bytes)
    first = json.loads(ask(jobs, type="latest", dir=str(tmp_path)).parts[1])
    assert first["frame"] == 1 and data.latest_answers == {"watch": 1, "scan": 0}
    write_frame(tmp_path / "run_0002.cbf", cbf_bytes)
    wait_for(lambda: prepared, what="the new frame prepared")
    assert prepared[-1].fn == str(tmp_path / "run_0002.cbf") and prepared[-1].source == "file"
    found = json.loads(ask(jobs, type="latest", dir=str(tmp_path)).parts[1])
    assert found["frame"] == 2 and found["dataset"]["last_frame"] == 2
    assert data.latest_answers == {"watch": 2, "scan": 0}
    spec = ViewSpec(path=tmp_path / "run_0002.cbf", xsize=1024)
    served = data.renderer.jpeg(spec, Look(), fn=str(spec.path))
    assert served.source == "image"


def test_frames_faster_than_reductions_are_coalesced(
    tmp_path: Path, cbf_bytes: bytes, live: tuple[LiveData, list[Prepared]]
) -> None:
    data, prepared = live
    assert data._watch(str(tmp_path)) is not None
    with data.queue.user_request():  # a long request holds the background back
        for number in range(1, 8):
            write_frame(tmp_path / f"run_{number:04d}.cbf", cbf_bytes)
        wait_for(lambda: data.queue.pending(LIVE), what="a queued frame")
        time.sleep(0.2)
    assert data.queue.wait_idle(30)
    assert [p.fn for p in prepared] == [str(tmp_path / "run_0007.cbf")]


def test_a_half_written_frame_fails_alone(
    tmp_path: Path, cbf_bytes: bytes, live: tuple[LiveData, list[Prepared]]
) -> None:
    data, prepared = live
    data._watch(str(tmp_path))
    write_frame(tmp_path / "run_0001.cbf", cbf_bytes[: len(cbf_bytes) // 3])
    wait_for(lambda: data.queue.failed, what="the failed reduction")
    write_frame(tmp_path / "run_0002.cbf", cbf_bytes)
    wait_for(lambda: prepared, what="the next frame prepared")
    assert prepared[0].fn.endswith("run_0002.cbf")


def test_appended_eiger_frames_are_prepared_and_latest(
    tmp_path: Path, live: tuple[LiveData, list[Prepared]]
) -> None:
    data, prepared = live
    jobs = Jobs(renderer=data.renderer, live=data)
    writer = LiveEigerWriter(tmp_path, "live_001", geometry=SMALL_EIGER, planned_frames=50)
    try:
        writer.write_frame()
        ask(jobs, type="latest", dir=str(tmp_path))
        for _ in range(3):
            number = writer.write_frame()
            wait_for(
                lambda n=number: any(p.frame == n for p in prepared),
                what=f"frame {number} prepared",
            )
            found = json.loads(ask(jobs, type="latest", dir=str(tmp_path)).parts[1])
            assert found["frame"] == number
            assert found["dataset"]["path"] == str(writer.master)
        # Each frame reduced once; later events of the same write find it made ("image").
        made = [p.frame for p in prepared if p.source == "file"]
        assert sorted(made) == [2, 3, 4]
        reply = ask(jobs, type="jpeg", fn=str(writer.master), frame=4, xsize=1024)
        assert json.loads(reply.parts[0])["frame"] == 4
    finally:
        writer.close()
    assert data.latest_answers["scan"] == 0


def test_a_view_prepares_its_neighbours(
    tmp_path: Path, live: tuple[LiveData, list[Prepared]]
) -> None:
    data, prepared = live
    jobs = Jobs(renderer=data.renderer, live=data)
    writer = LiveEigerWriter(tmp_path, "s_001", geometry=SMALL_EIGER, planned_frames=9)
    for _ in range(9):
        writer.write_frame()
    writer.close()
    data.queue.wait_idle(30)
    prepared.clear()
    view = {"type": "jpeg", "fn": str(writer.master), "xsize": 600, "colormap": "heat"}
    ask(jobs, **view, frame=5)
    wait_for(lambda: len(prepared) == 2, what="both neighbours")
    assert sorted(p.frame for p in prepared) == [4, 6]
    assert {p.kind for p in prepared} == {PREFETCH}
    before = dict(data.renderer.counts.by_source)
    ask(jobs, **view, frame=6)
    assert data.renderer.counts.by_source["image"] == before["image"] + 1


def test_a_followed_directory_prefetches_nothing_until_the_user_browses(
    tmp_path: Path, live: tuple[LiveData, list[Prepared]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("imageserver.service.live.FOLLOWING_S", 0.5)
    data, _ = live
    jobs = Jobs(renderer=data.renderer, live=data)
    writer = LiveEigerWriter(tmp_path, "s_001", geometry=SMALL_EIGER, planned_frames=9)
    for _ in range(9):
        writer.write_frame()
    writer.close()
    data.queue.wait_idle(30)
    view = {"type": "jpeg", "fn": str(writer.master), "xsize": 300}
    with data.queue.user_request():  # hold the queue: what is queued stays visible
        ask(jobs, type="latest", dir=str(tmp_path))
        ask(jobs, **view, frame=9)
        assert data.queue.pending(PREFETCH) == {}  # following: live data brings what is next
        time.sleep(0.6)  # no latest since: the user browses by hand
        ask(jobs, **view, frame=4)
        assert list(data.queue.pending(PREFETCH).values()) == [2]


def test_viewing_elsewhere_drops_the_old_neighbours(
    tmp_path: Path, live: tuple[LiveData, list[Prepared]]
) -> None:
    data, _ = live
    jobs = Jobs(renderer=data.renderer, live=data)
    writer = LiveEigerWriter(tmp_path, "s_001", geometry=SMALL_EIGER, planned_frames=9)
    for _ in range(9):
        writer.write_frame()
    writer.close()
    data.queue.wait_idle(30)
    with data.queue.user_request():
        ask(jobs, type="jpeg", fn=str(writer.master), frame=2, xsize=300)
        ask(jobs, type="jpeg", fn=str(writer.master), frame=8, xsize=300)
        assert list(data.queue.pending(PREFETCH).values()) == [2]
        series = next(iter(data.queue.pending(PREFETCH)))
        assert series == ("file", str(writer.master))


def test_an_unreadable_directory_ends_its_watch(
    tmp_path: Path, cbf_bytes: bytes, live: tuple[LiveData, list[Prepared]]
) -> None:
    data, _ = live
    jobs = Jobs(renderer=data.renderer, live=data)
    directory = tmp_path / "d"
    directory.mkdir()
    write_frame(directory / "run_0001.cbf", cbf_bytes)
    ask(jobs, type="latest", dir=str(directory))
    assert data.watcher is not None and data.watcher.is_watched(str(directory))
    directory.chmod(0o000)
    try:
        wait_for(lambda: not data.watcher.is_watched(str(directory)), what="the watch's end")
    finally:
        directory.chmod(0o755)


def test_without_a_watch_latest_scans(tmp_path: Path, cbf_bytes: bytes) -> None:
    data = LiveData(LiveSettings(watch=False), make_renderer())
    try:
        jobs = Jobs(renderer=data.renderer, live=data)
        write_frame(tmp_path / "run_0001.cbf", cbf_bytes)
        found = json.loads(ask(jobs, type="latest", dir=str(tmp_path)).parts[1])
        assert found["frame"] == 1 and data.latest_answers == {"watch": 0, "scan": 1}
    finally:
        data.close()
