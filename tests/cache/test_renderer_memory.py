"""What a worker's cache costs in memory: entries charged what they keep alive, resident size
bounded by the budget while busy, and given back after an idle spell (real files, real RSS)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imageserver.cache.keys import Scope
from imageserver.cache.memory import MemoryCache
from imageserver.cache.renderer import CachedRenderer, entry_nbytes
from imageserver.formats.base import Frame, FrameMeta
from imageserver.render import Look, ViewSpec
from imageserver.sampledata.marccd import write_marccd

MiB = 1 << 20
BUDGET = 64 * MiB
SLACK = 24 * MiB
"""Above fixed + budget: allocator fragmentation and the interpreter's own small growth."""
L_CYSTEINE = ("l-cyst_01_00001.cbf", "l-cyst_01_00002.cbf")


def small_meta() -> FrameMeta:
    return FrameMeta(format_name="test", width_px=512, height_px=512, bit_depth=32)


def test_an_entry_is_charged_for_the_buffers_its_arrays_keep_alive() -> None:
    """A frame read with ``frombuffer`` keeps the file's bytes; a row of a chunk the chunk."""
    header = 4096
    content = bytes(header) + np.arange(512 * 512, dtype=np.uint32).tobytes()
    from_file = np.frombuffer(content, np.uint32, offset=header).reshape(512, 512)
    chunk = np.zeros((4, 512, 512), np.uint32)  # four frames stored as one chunk
    for pixels, owner_bytes in ((from_file, len(content)), (chunk[1], chunk.nbytes)):
        frame = Frame(pixels=pixels, mask=None, meta=small_meta(), number=1, path=Path("/x"))
        assert owner_bytes <= entry_nbytes(frame) <= owner_bytes + 16_384
    own = Frame(np.zeros((512, 512), np.uint32), None, small_meta(), 1, Path("/x"))
    assert 512 * 512 * 4 <= entry_nbytes(own) <= 512 * 512 * 4 + 16_384


def test_views_and_images_are_charged_at_least_what_they_keep_alive(tmp_path: Path) -> None:
    """tracemalloc counts every Python object and NumPy buffer the cache keeps."""
    write_marccd(tmp_path / "frame.mccd", size_px=512, seed=4)
    memory: MemoryCache[Any] = MemoryCache(1 << 30, entry_nbytes)
    cached = CachedRenderer(Scope.for_worker(os.getgid(), str(tmp_path)), memory)
    spec = ViewSpec(tmp_path / "frame.mccd", xsize=128)
    cached.jpeg(spec, Look(), fn="f")  # the frame is held; what follows is views and images
    for xsize in (16, 64, 256):
        for kind in ("view", "image"):
            gc.collect()
            tracemalloc.start()
            before, charged_before = tracemalloc.get_traced_memory()[0], memory.nbytes
            for i in range(20):
                if kind == "view":
                    view = ViewSpec(spec.path, xsize=xsize, zoom=1 + i / 8)
                    cached.jpeg(view, Look(contrast=5), fn="f")
                else:
                    cached.jpeg(ViewSpec(spec.path, xsize=xsize), Look(contrast=100 + i), fn="f")
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            charged = memory.nbytes - charged_before
            assert held <= charged <= 2 * held + 20 * 4096, (xsize, kind, held, charged)


WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from imageserver.allocator import resident_bytes, tune_allocator

    tune_allocator()  # as the zygote does, before anything allocates

    from imageserver.cache.keys import Scope
    from imageserver.cache.memory import MemoryCache
    from imageserver.cache.renderer import CachedRenderer, entry_nbytes
    from imageserver.imaging.reduce import warm_up
    from imageserver.render import Look, ViewSpec

    home, budget, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    files = sorted(home.glob("*.cbf"))
    warm_up()
    memory = MemoryCache(budget, entry_nbytes)
    cached = CachedRenderer(Scope.for_worker(os.getgid(), str(home)), memory)

    def spec(i):
        zoom = 1 + i % 4
        return ViewSpec(
            files[i % 2], xsize=64 + (i * 37) % 449, zoom=zoom,
            segcol=(i // 4) % zoom, segrow=(i // 16) % zoom,
        )

    for path in files:  # each file decoded and its largest view made: the working set
        cached.jpeg(ViewSpec(path, xsize=512), Look(), fn="f")
    fixed = resident_bytes() - memory.nbytes  # what is not the cache
    peak = 0
    for i in range(n):
        cached.jpeg(spec(i), Look(contrast=1 + i % 97), fn="f")
        peak = max(peak, resident_bytes())
    busy = resident_bytes()
    dropped = cached.release_idle()
    print(json.dumps({
        "fixed": fixed, "peak": peak, "busy": busy, "dropped": dropped,
        "idle": resident_bytes(), "kept": memory.nbytes, "evictions": memory.stats.evictions,
    }))
    """
)


@pytest.fixture(scope="module")
def worker_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """A fresh process serving 1500 distinct views of two real CBFs with a 64 MiB budget,
    then released as after an idle spell: its resident sizes."""
    home = tmp_path_factory.mktemp("worker-home")
    for name in L_CYSTEINE:
        shutil.copy(shared_data / "l-cysteine" / name, home / name)
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(home), str(BUDGET), "1500"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_a_busy_workers_resident_size_stays_within_fixed_plus_budget(
    worker_run: dict[str, int],
) -> None:
    assert worker_run["evictions"] > 1000  # the budget was filled and cycled many times
    growth = worker_run["peak"] - worker_run["fixed"]
    assert growth <= BUDGET + SLACK, f"{growth / MiB:.0f} MiB above the fixed part"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_an_idle_worker_keeps_little_and_gives_the_memory_back(
    worker_run: dict[str, int],
) -> None:
    assert worker_run["kept"] <= BUDGET // 16
    assert worker_run["dropped"] >= BUDGET - 2 * MiB - BUDGET // 16
    given_back = worker_run["busy"] - worker_run["idle"]
    assert given_back >= 0.9 * worker_run["dropped"], f"{given_back / MiB:.0f} MiB given back"
    assert worker_run["idle"] - worker_run["fixed"] <= BUDGET // 16 + SLACK
