"""Cache keys: one function, canonical paths, file identity, planned geometry, ESAF scope."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imageserver.cache.keys import Scope, cache_key, file_identity
from imageserver.imaging.geometry import plan_view
from imageserver.render import Look


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_paths_inside_the_esaf_directory_are_relative_to_its_owner(tmp_path: Path) -> None:
    home = tmp_path / "esaf"
    inside = write(home / "run1" / "x.cbf", b"abc")
    outside = write(tmp_path / "elsewhere" / "y.cbf", b"abc")
    scope = Scope.for_worker(61001, str(home))
    owner = os.stat(home).st_uid
    assert file_identity(inside, scope).path == f"~{owner}/run1/x.cbf"  # type: ignore[union-attr]
    assert file_identity(outside, scope).path == str(outside.resolve())  # type: ignore[union-attr]


def test_a_symlink_and_a_relative_path_name_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "esaf"
    target = write(home / "data" / "x.cbf", b"abc")
    (home / "link.cbf").symlink_to(target)
    scope = Scope.for_worker(61001, str(home))
    monkeypatch.chdir(home)  # a worker's working directory is its ESAF directory
    names = {file_identity(p, scope) for p in (target, home / "link.cbf", "data/x.cbf")}
    assert len(names) == 1 and None not in names


def test_a_rewritten_file_gets_a_new_identity_even_with_its_old_size_and_mtime(
    tmp_path: Path,
) -> None:
    scope = Scope.for_worker(61001, str(tmp_path))
    path = write(tmp_path / "x.cbf", b"first content")
    before = file_identity(path, scope)
    stat = os.stat(path)
    path.write_bytes(b"other content")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime set back, ctime cannot be
    after = file_identity(path, scope)
    assert before is not None and after is not None
    assert (after.size_bytes, after.mtime_ns) == (before.size_bytes, before.mtime_ns)
    assert after != before
    assert cache_key(scope, after, frame=1) != cache_key(scope, before, frame=1)


def test_missing_and_non_regular_files_have_no_identity(tmp_path: Path) -> None:
    scope = Scope.for_worker(61001, str(tmp_path))
    os.mkfifo(tmp_path / "fifo")
    assert file_identity(tmp_path / "absent.cbf", scope) is None
    assert file_identity(tmp_path, scope) is None
    assert file_identity(tmp_path / "fifo", scope) is None
    assert file_identity("bad\0name", scope) is None


def test_views_are_keyed_after_planning(tmp_path: Path) -> None:
    scope = Scope.for_worker(61001, str(tmp_path))
    file = file_identity(write(tmp_path / "x.cbf", b"abc"), scope)
    assert file is not None

    def key(**geometry: float) -> object:
        view = plan_view(2068, 1062, xsize=512, **geometry)  # type: ignore[arg-type]
        return cache_key(scope, file, frame=1, view=view)

    assert key(zoom=2.04) == key(zoom=2.0)
    assert key(zoom=0.5, segcol=3.0) == key(zoom=1.0)
    assert key(zoom=2.0, segcol=1.0) != key(zoom=2.0)


def test_every_kind_has_its_own_key_and_the_gid_leads_the_redis_name(tmp_path: Path) -> None:
    scope = Scope.for_worker(61001, str(tmp_path))
    file = file_identity(write(tmp_path / "x.cbf", b"abc"), scope)
    assert file is not None
    view = plan_view(100, 100, xsize=64)
    keys = [
        cache_key(scope, file),
        cache_key(scope, file, frame=1),
        cache_key(scope, file, frame=1, view=view),
        cache_key(scope, file, frame=1, view=view, look=Look()),
        cache_key(scope, file, frame=1, view=view, look=Look(contrast=20)),
    ]
    assert [k.kind for k in keys] == ["dims", "frame", "view", "image", "image"]
    assert len({k.redis_name("is") for k in keys}) == 5
    assert all(k.redis_name("is").startswith(f"is:61001:{k.kind}:") for k in keys)
    other = Scope(gid=61002, home=scope.home, home_tag=scope.home_tag)
    assert cache_key(other, file, frame=1).redis_name("is").startswith("is:61002:frame:")
