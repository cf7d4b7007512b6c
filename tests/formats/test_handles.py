"""HandleCache and LayoutCache: reuse, bounds, eviction while in use, rewrites, threads."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from imageserver.formats.handles import FileKey, HandleCache, LayoutCache, file_key


class RecordingOpener:
    """Opens files for real and keeps every handle, so tests can see which were closed."""

    def __init__(self) -> None:
        self.handles: list[h5py.File] = []
        self._lock = threading.Lock()

    def __call__(self, path: str) -> h5py.File:
        handle = h5py.File(path, "r")
        with self._lock:
            self.handles.append(handle)
        return handle

    def open_count(self) -> int:
        return sum(bool(handle.id.valid) for handle in self.handles)


@pytest.fixture
def small_files(tmp_path: Path) -> list[Path]:
    """Five HDF5 files, each holding its own index in dataset 'value'."""
    paths = []
    for index in range(5):
        path = tmp_path / f"f{index}.h5"
        with h5py.File(path, "w") as f:
            f["value"] = np.int64(index)
        paths.append(path)
    return paths


def test_file_key_follows_content_and_time(small_files: list[Path]) -> None:
    path = small_files[0]
    key = file_key(path)
    info = path.stat()
    assert key == FileKey(os.path.realpath(path), info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    os.utime(path, ns=(1, key.mtime_ns + 1))
    assert file_key(path) != key
    with pytest.raises(FileNotFoundError):
        file_key(path.with_name("absent.h5"))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda path: path.chmod(0o600), id="chmod"),
        pytest.param(lambda path: os.chown(path, -1, os.getgid()), id="chgrp"),
    ],
)
def test_an_access_change_makes_a_new_key_and_a_new_handle(
    small_files: list[Path], change: Callable[[Path], None]
) -> None:
    """chmod and chgrp leave size and mtime alone; only the ctime says access may differ."""
    opener = RecordingOpener()
    cache = HandleCache(opener=opener)
    path = small_files[2]
    with cache.open(path) as before:
        assert int(before["value"][()]) == 2
    key = file_key(path)
    time.sleep(0.01)  # a ctime tick apart, on any filesystem clock

    change(path)

    after_key = file_key(path)
    assert (after_key.size_bytes, after_key.mtime_ns) == (key.size_bytes, key.mtime_ns)
    assert after_key != key
    with cache.open(path) as after:
        assert after is not before and int(after["value"][()]) == 2
    assert not before.id.valid and len(opener.handles) == 2 and len(cache) == 1


def test_a_file_is_opened_once_and_reused(small_files: list[Path]) -> None:
    opener = RecordingOpener()
    cache = HandleCache(opener=opener)

    with cache.open(small_files[1]) as first, cache.open(small_files[1]) as second:
        assert first is second
        assert int(first["value"][()]) == 1
    with cache.open(small_files[1]) as third:
        assert third is first

    assert len(opener.handles) == 1 and len(cache) == 1


def test_the_least_recently_used_handle_is_closed(small_files: list[Path]) -> None:
    opener = RecordingOpener()
    cache = HandleCache(max_files=2, opener=opener)

    for path in (small_files[0], small_files[1], small_files[0], small_files[2]):
        with cache.open(path):
            pass

    assert len(cache) == 2
    assert [bool(handle.id.valid) for handle in opener.handles] == [True, False, True]


def test_a_handle_evicted_while_in_use_stays_open_until_released(small_files: list[Path]) -> None:
    opener = RecordingOpener()
    cache = HandleCache(max_files=1, opener=opener)

    with cache.open(small_files[0]) as held:
        for path in small_files[1:3]:
            with cache.open(path):
                pass
        assert held.id.valid and int(held["value"][()]) == 0
    assert not held.id.valid
    assert opener.open_count() == 1


def test_a_rewritten_file_gets_a_new_handle(small_files: list[Path]) -> None:
    opener = RecordingOpener()
    cache = HandleCache(opener=opener)
    path = small_files[3]
    with cache.open(path) as before:
        assert int(before["value"][()]) == 3

    replacement = path.with_suffix(".new")
    with h5py.File(replacement, "w") as f:
        f["value"] = np.int64(33)
    replacement.replace(path)

    with cache.open(path) as after:
        assert int(after["value"][()]) == 33
    assert not before.id.valid and len(cache) == 1


def test_clear_closes_every_idle_handle(small_files: list[Path]) -> None:
    opener = RecordingOpener()
    cache = HandleCache(opener=opener)
    for path in small_files:
        with cache.open(path):
            pass

    cache.clear()

    assert len(cache) == 0 and opener.open_count() == 0


def test_opener_errors_pass_through_and_cache_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5 at all")
    cache = HandleCache()

    with pytest.raises(OSError, match="file signature not found"), cache.open(broken):
        pass
    assert len(cache) == 0


@pytest.mark.parametrize("cache_type", [HandleCache, LayoutCache])
def test_bounds_must_be_positive(cache_type: type) -> None:
    with pytest.raises(ValueError, match="at least 1, not 0"):
        cache_type(0)


def test_many_threads_share_a_small_cache(small_files: list[Path]) -> None:
    opener = RecordingOpener()
    cache = HandleCache(max_files=2, opener=opener)
    jobs = [small_files[i % 5] for i in range(400)]

    def read(path: Path) -> int:
        with cache.open(path) as f:
            return int(f["value"][()])

    with ThreadPoolExecutor(max_workers=8) as pool:
        values = list(pool.map(read, jobs, timeout=60))

    assert values == [i % 5 for i in range(400)]
    assert len(cache) <= 2
    assert opener.open_count() == len(cache)  # every evicted or duplicate handle was closed


def test_layouts_are_built_once_per_key_even_under_contention(small_files: list[Path]) -> None:
    cache: LayoutCache[tuple[int, ...]] = LayoutCache()
    key = file_key(small_files[0])
    builds: list[int] = []
    start = threading.Barrier(8)

    def build() -> tuple[int, ...]:
        builds.append(1)
        return tuple(range(10_000))

    def get(_: int) -> tuple[int, ...]:
        start.wait(timeout=10)
        return cache.get_or_build(key, build)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(get, range(8), timeout=60))

    assert len(builds) == 1
    assert all(result is results[0] for result in results)


def test_layout_cache_is_bounded_and_replaces_rewritten_files(small_files: list[Path]) -> None:
    cache: LayoutCache[str] = LayoutCache(max_entries=2)
    keys = [file_key(path) for path in small_files[:3]]
    for key in keys:
        cache.get_or_build(key, functools.partial(str, key.path))
    assert len(cache) == 2
    assert cache.get_or_build(keys[0], lambda: "rebuilt") == "rebuilt"  # the oldest was dropped

    newer = keys[2]._replace(mtime_ns=keys[2].mtime_ns + 1)
    assert cache.get_or_build(newer, lambda: "new content") == "new content"
    assert cache.get_or_build(keys[2], lambda: "old again") == "old again"  # replaced, not kept

    cache.discard(keys[2])
    assert cache.get_or_build(keys[2], lambda: "after discard") == "after discard"


def test_a_failed_build_is_retried(small_files: list[Path]) -> None:
    cache: LayoutCache[str] = LayoutCache()
    key = file_key(small_files[0])

    def failing() -> str:
        raise RuntimeError("file vanished mid-read")

    with pytest.raises(RuntimeError, match="vanished"):
        cache.get_or_build(key, failing)
    assert cache.get_or_build(key, lambda: "second try") == "second try"
