"""CachedRenderer and the jobs on real sample files: what is decoded, when, and by whom."""

from __future__ import annotations

import bz2
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fabio.cbfimage
import numpy as np
import pytest
import simplejpeg
from cache_contract import run_together

from imageserver.cache import renderer as renderer_module
from imageserver.cache.codec import DimsCodec, ViewCodec
from imageserver.cache.keys import Scope, cache_key, file_identity
from imageserver.cache.memory import MemoryCache
from imageserver.cache.renderer import (
    CachedRenderer,
    RenderedReply,
    entry_nbytes,
    renderer_for_worker,
)
from imageserver.cache.shared import RedisLink, SharedCache
from imageserver.config import CacheSettings, LimitSettings
from imageserver.errors import FileMissingError, FrameRangeError, RequestError
from imageserver.formats import open_frame, open_source
from imageserver.formats.base import AnyFrame, EncodedFrame
from imageserver.render import Look, ViewSpec, render_file
from imageserver.sampledata.dataset import EIGER16M_STEM, EIGER_PIXEL_M, MARCCD_LE
from imageserver.sampledata.eiger import write_eiger_series
from imageserver.sampledata.marccd import write_marccd
from imageserver.sampledata.pattern import centred_geometry
from imageserver.service import jobs
from imageserver.service.reply import Failure, Success
from imageserver.transports.frames import legacy_frames

GID = 61001


class CountingDecode:
    """The real decode (kept compressed where the format allows, as in production), counted."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, path: Path, number: int) -> AnyFrame:
        with self._lock:
            self.calls += 1
        return open_source(path, number)


@pytest.fixture
def home(sample_dir: Path, tmp_path: Path) -> Path:
    """An ESAF directory holding a 2-frame Eiger series and a MAR CCD frame."""
    for path in sample_dir.glob(f"{EIGER16M_STEM}_*.h5"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(sample_dir / MARCCD_LE, tmp_path / MARCCD_LE)
    return tmp_path


def renderer(
    home: Path,
    budget: int = 256 << 20,
    redis_url: str | None = None,
    gid: int = GID,
    fraction: float = 0.5,
) -> tuple[CachedRenderer, CountingDecode]:
    decode = CountingDecode()
    memory: MemoryCache[Any] = MemoryCache(budget, entry_nbytes, max_entry_fraction=fraction)
    views = dims = None
    if redis_url is not None:
        link = RedisLink.connect(redis_url, prefix="istest", timeout_s=0.25, retry_s=2.0)
        views = SharedCache(link, ViewCodec(), ttl_s=60, claim_s=2.0)
        dims = SharedCache(link, DimsCodec(), ttl_s=60, claim_s=2.0)
    scope = Scope.for_worker(gid, str(home))
    made = CachedRenderer(scope, memory, shared_views=views, shared_dims=dims, decode=decode)
    return made, decode


def master(home: Path) -> Path:
    return home / f"{EIGER16M_STEM}_master.h5"


def test_a_new_contrast_label_or_colormap_reuses_the_reduced_view(home: Path) -> None:
    cached, decode = renderer(home)
    spec = ViewSpec(master(home), frame=2, xsize=400)
    banner = Look(colormap="heat", label="x", label_height_px=20)
    looks = [Look(), Look(contrast=40, wval=2), banner]
    sources = [cached.jpeg(spec, look, fn="f").source for look in looks]
    assert sources == ["file", "memory", "memory"]
    assert decode.calls == 1
    for look in looks:  # each is exactly the uncached rendering
        assert cached.jpeg(spec, look, fn="f").value.image.data == render_file(spec, look)[0].data


def test_an_exact_repeat_is_the_stored_image(home: Path) -> None:
    cached, _ = renderer(home)
    spec, look = ViewSpec(master(home), xsize=300), Look(contrast=30)
    first = cached.jpeg(spec, look, fn="f")
    again = cached.jpeg(spec, look, fn="f")
    assert (first.source, again.source) == ("file", "image")
    assert again.value.image.data is first.value.image.data


def test_the_tiles_of_a_zoom_and_a_spot_count_decode_the_frame_once(home: Path) -> None:
    cached, decode = renderer(home)
    sources = [
        cached.jpeg(
            ViewSpec(master(home), xsize=128, zoom=4, segcol=col, segrow=row), Look(), fn="f"
        ).source
        for row in range(4)
        for col in range(4)
    ]
    spots = cached.reduced_view(ViewSpec(master(home), xsize=384), fn="f")
    assert sources == ["file"] + ["frame"] * 15
    assert spots.source == "frame" and spots.value.stats.spots is not None
    assert decode.calls == 1


def test_concurrent_tiles_of_a_new_frame_decode_it_once(home: Path) -> None:
    cached, decode = renderer(home)

    def tile(col: int, row: int) -> bytes:
        spec = ViewSpec(master(home), frame=2, xsize=96, zoom=4, segcol=col, segrow=row)
        return cached.jpeg(spec, Look(), fn="f").value.image.data

    images = run_together([lambda c=c, r=r: tile(c, r) for r in range(4) for c in range(4)])
    assert all(isinstance(image, bytes) for image in images)
    assert decode.calls == 1


def test_the_tiles_of_a_zoomed_frame_decode_each_band_of_rows_once(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 tiles at once: each band of rows is decoded by one tile and shared by the others,
    and every tile is exactly the uncached rendering."""
    decoded: list[tuple[int, int]] = []
    lock = threading.Lock()
    real_rows = EncodedFrame.rows

    def counting_rows(self: EncodedFrame, first: int, stop: int) -> Any:
        with lock:
            decoded.append((first, stop))
        return real_rows(self, first, stop)

    monkeypatch.setattr(EncodedFrame, "rows", counting_rows)
    monkeypatch.setattr(renderer_module, "BAND_ELEMENTS", 16 * 1100)  # 16 rows, many bands
    cached, decode = renderer(home)
    specs = [
        ViewSpec(master(home), frame=2, xsize=96, zoom=4, segcol=col, segrow=row)
        for row in range(4)
        for col in range(4)
    ]
    images = run_together([lambda s=s: cached.jpeg(s, Look(), fn="f") for s in specs])
    assert decode.calls == 1
    bands = [band for band in decoded if band[1] > band[0]]
    assert len(bands) == len(set(bands)) and all(stop - first <= 16 for first, stop in bands)
    height = open_frame(master(home), 2).pixels.shape[0]
    assert sum(stop - first for first, stop in bands) == height  # the 4 rows of tiles: all
    for spec, image in zip(specs, images, strict=True):
        assert image.value.image.data == render_file(spec, Look())[0].data


def test_a_rewritten_file_is_never_served_stale(home: Path) -> None:
    """Same name, same size, even the old mtime put back: the new pixels are served."""
    path = home / "rewritten.mccd"
    write_marccd(path, size_px=256, seed=1)
    cached, decode = renderer(home)
    spec, look = ViewSpec(path, xsize=256), Look(contrast=200, wval=0)
    old = cached.jpeg(spec, look, fn="f").value
    stat = os.stat(path)
    write_marccd(path, size_px=256, seed=2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    new = cached.jpeg(spec, look, fn="f")
    assert new.source == "file" and decode.calls == 2
    assert new.value.image.data != old.image.data
    assert new.value.image.data == render_file(spec, look)[0].data


def test_a_rewritten_eiger_data_file_is_never_served_stale(tmp_path: Path) -> None:
    """The pixels live in the data file: rewriting it, with the master untouched, is seen."""
    home, elsewhere = tmp_path / "esaf", tmp_path / "elsewhere"
    geometry = centred_geometry(300, 280, EIGER_PIXEL_M)
    series = write_eiger_series(home, "s", geometry=geometry, n_frames=2, seed=1)
    write_eiger_series(elsewhere, "s", geometry=geometry, n_frames=2, seed=2)
    cached, decode = renderer(home)
    spec, look = ViewSpec(series, frame=2, xsize=256), Look(contrast=200, wval=0)
    old = cached.jpeg(spec, look, fn="f").value
    master_before = os.stat(series)
    shutil.copy(elsewhere / "s_data_000002.h5", home / "s_data_000002.h5")
    assert os.stat(series) == master_before
    new = cached.jpeg(spec, look, fn="f")
    assert new.source == "file" and decode.calls == 2
    assert new.value.image.data != old.image.data
    assert new.value.image.data == render_file(spec, look)[0].data
    other_frame = ViewSpec(series, frame=1, xsize=256)  # its data file did not change
    cached.jpeg(other_frame, look, fn="f")
    assert cached.jpeg(other_frame, look, fn="f").source == "image"


def test_workers_of_one_esaf_share_reduced_views_through_redis(home: Path, redis_url: str) -> None:
    first, first_decode = renderer(home, redis_url=redis_url)
    second, second_decode = renderer(home, redis_url=redis_url)  # another worker process
    spec, look = ViewSpec(master(home), frame=2, xsize=512), Look(contrast=25)
    made = first.jpeg(spec, look, fn="f")
    found = second.jpeg(spec, look, fn="f")
    assert (made.source, found.source) == ("file", "shared")
    assert (first_decode.calls, second_decode.calls) == (1, 0)
    assert found.value.image.data == made.value.image.data
    assert found.value.meta == made.value.meta
    other_esaf, other_decode = renderer(home, redis_url=redis_url, gid=GID + 1)
    assert other_esaf.jpeg(spec, look, fn="f").source == "file"
    assert other_decode.calls == 1


def test_memory_stays_within_its_budget_under_a_stream_of_distinct_requests(home: Path) -> None:
    budget = 3 << 20
    cached, decode = renderer(home, budget=budget, fraction=0.5)
    path = home / MARCCD_LE  # 512 × 512, read as uint32: a 1 MB frame, kept
    for i in range(300):
        spec = ViewSpec(path, xsize=64 + (i * 37) % 500, zoom=1 + (i % 5), segcol=i % 3)
        cached.jpeg(spec, Look(contrast=i % 7 + 1), fn="f")
        assert cached.memory.nbytes <= budget
    assert cached.memory.stats.evictions > 100
    assert decode.calls < 30  # the frame is evicted now and then, not decoded per request
    big, big_decode = renderer(home, budget=budget, fraction=0.5)
    for frame, xsize in ((1, 64), (2, 64), (1, 80)):
        big.jpeg(ViewSpec(master(home), frame=frame, xsize=xsize), Look(), fn="f")
    assert big_decode.calls == 3  # an 11 MB frame is larger than half of 3 MB: not kept
    assert big.memory.nbytes <= budget


def test_a_bad_geometry_is_a_request_error_and_costs_one_decode(home: Path) -> None:
    cached, decode = renderer(home)
    path = home / MARCCD_LE
    with pytest.raises(RequestError, match="xsize 20000 is above the limit"):
        cached.jpeg(ViewSpec(path, xsize=20000), Look(), fn="f")
    assert cached.jpeg(ViewSpec(path, xsize=64), Look(), fn="f").source == "frame"
    assert decode.calls == 1


def test_a_compressed_frame_is_kept_for_zoomed_views_only(home: Path) -> None:
    """A whole view keeps its view, not the Eiger chunk (fresh memory per frame); the tiles
    of a zoom keep it, and their bands, for the tiles beside them."""
    cached, decode = renderer(home)
    sources = [
        cached.jpeg(ViewSpec(master(home), xsize=xsize), Look(), fn="f").source
        for xsize in (64, 80)
    ]
    assert sources == ["file", "file"] and decode.calls == 2
    tiles = [
        cached.jpeg(ViewSpec(master(home), xsize=64, zoom=2, segcol=col), Look(), fn="f").source
        for col in range(2)
    ]
    assert tiles == ["file", "frame"] and decode.calls == 3


def write_pilatus300k_bz2(path: Path) -> Path:
    """A Pilatus 300K-sized miniCBF (487 × 619, gaps at −1), bzip2-wrapped, written with fabio.

    It is one bzip2 block, so learning that frame 2 is not in it (unwrapping the head, ~25
    ms) takes about as long as decoding frame 1: a request for frame 2 that starts first
    holds the frame-size computation long enough for every other request to wait on it.
    """
    counts = np.random.default_rng(3).poisson(20, size=(619, 487)).astype(np.int32)
    counts[:, 100:107] = -1
    header = {
        "_array_data.header_convention": "PILATUS_1.2",
        "_array_data.header_contents": "# Detector: PILATUS 300K\n# Beam_xy (243.5, 309.5) pixels",
    }
    plain = path.with_suffix("")
    fabio.cbfimage.CbfImage(data=counts, header=header).write(str(plain))
    path.write_bytes(bz2.compress(plain.read_bytes()))
    plain.unlink()
    return path


def jpeg_of(cached: CachedRenderer, spec: ViewSpec) -> RenderedReply:
    return cached.jpeg(spec, Look(), fn="f").value


MIXED_REQUESTS = [(2, 256)] * 4 + [(1, 256), (1, 200), (1, 20000), (1, 20000)]
"""(frame, xsize) of requests arriving at once: half ask for a frame the file lacks, two for
a size above the limit, two are valid."""


def test_concurrent_requests_for_a_new_file_each_get_their_own_answer(tmp_path: Path) -> None:
    """One request's input error is never another's answer (frame 2 of a single-frame file,
    an xsize above the limit), whichever request happens to learn the frame size."""
    path = write_pilatus300k_bz2(tmp_path / "small_0001.cbf.bz2")
    wrong: list[str] = []
    for attempt in range(12):  # a new file identity and a new worker memory each time
        os.utime(path, ns=(attempt * 10**9, attempt * 10**9))
        cached, _ = renderer(tmp_path)
        specs = [ViewSpec(path, frame=frame, xsize=xsize) for frame, xsize in MIXED_REQUESTS]
        answers = run_together([functools.partial(jpeg_of, cached, spec) for spec in specs])
        for spec, answer in zip(specs, answers, strict=True):
            if spec.frame == 2:
                right = isinstance(answer, FrameRangeError) and "frame 2 is outside" in str(answer)
            elif spec.xsize > 10000:
                right = isinstance(answer, RequestError) and "xsize 20000" in str(answer)
            else:
                right = not isinstance(answer, Exception) and answer.image.width_px == spec.xsize
            if not right:
                wrong.append(f"frame {spec.frame} xsize {spec.xsize}: {answer!r}")
    assert wrong == []
    good = ViewSpec(path, xsize=256)
    assert cached.jpeg(good, Look(), fn="f").value.image.data == render_file(good, Look())[0].data


def test_a_request_for_a_missing_frame_still_learns_the_files_frame_size(tmp_path: Path) -> None:
    """The size is everyone's: it comes from the header when the requester's frame is absent."""
    path = write_pilatus300k_bz2(tmp_path / "small_0001.cbf.bz2")
    cached, decode = renderer(tmp_path)
    with pytest.raises(FrameRangeError, match="frame 2 is outside"):
        cached.jpeg(ViewSpec(path, frame=2, xsize=256), Look(), fn="f")
    file = file_identity(path, cached.scope)
    assert file is not None
    assert cached.memory.get(cache_key(cached.scope, file)) == (487, 619)
    assert decode.calls == 2  # the size's attempt, then the request's own decode


def test_a_missing_file_raises_the_readers_error(home: Path) -> None:
    cached, _ = renderer(home)
    with pytest.raises(FileMissingError, match="not found"):
        cached.jpeg(ViewSpec(home / "absent.cbf"), Look(), fn="f")


def test_each_reply_names_the_file_as_its_request_did(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(home)
    cached, decode = renderer(home)
    names = [str(master(home)), master(home).name, f"./{master(home).name}"]
    metas = []
    for fn in names:
        payload = json.dumps({"type": "jpeg", "pid": "p", "fn": fn, "xsize": 64}).encode()
        frames = legacy_frames(jobs.handle(payload, renderer=cached))
        metas.append(json.loads(frames[2]))
        assert simplejpeg.decode_jpeg(frames[3]).shape[1] == 64
    assert [meta["fn"] for meta in metas] == names
    assert decode.calls == 1
    spots = legacy_frames(
        jobs.handle(
            json.dumps({"type": "spots", "pid": "p", "fn": names[1]}).encode(), renderer=cached
        )
    )
    assert json.loads(spots[2])["fn"] == names[1] and json.loads(spots[2])["spots"] > 0
    assert decode.calls == 2  # a new whole view reads the Eiger chunk again: not kept


WORKER_SCRIPT = """
import json, sys, time
from pathlib import Path
import redis
from imageserver.cache.renderer import renderer_for_worker
from imageserver.config import CacheSettings
from imageserver.formats import open_frame, open_source
from imageserver.render import Look, ViewSpec

url, home, master, start_at = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
settings = CacheSettings(redis_url=url, key_prefix="istest", claim_s=5.0)
cached = renderer_for_worker({"gid": 61001, "home": home, "cache": {"url": url}}, settings)
counter = redis.Redis.from_url(url)

def counting_decode(path, number):
    counter.incr("istest:decodes")
    return open_frame(path, number)

cached.decode = counting_decode
time.sleep(max(0.0, start_at - time.time()))
served = cached.jpeg(ViewSpec(master, frame=2, xsize=256), Look(), fn="f")
cached.views.shared.writer.flush()  # a worker lives on; this process would exit too soon
print(json.dumps([served.source, len(served.value.image.data)]))
"""


def test_users_opening_one_new_frame_at_once_decode_it_once_across_processes(
    home: Path, redis_url: str, module_redis: Any
) -> None:
    start_at = time.time() + 2.0
    command = [sys.executable, "-c", WORKER_SCRIPT, redis_url, str(home), str(master(home))]
    workers = [
        subprocess.Popen([*command, str(start_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 3, outputs
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(source for source, _ in results) == ["file", "shared", "shared"]
    assert len({size for _, size in results}) == 1
    assert int(module_redis.client().get("istest:decodes")) == 1, outputs


def test_a_worker_without_shared_access_keeps_to_memory(home: Path) -> None:
    cached = renderer_for_worker({"gid": GID, "home": str(home)}, CacheSettings())
    assert cached.views.shared is None
    assert cached.memory.max_bytes >= 512 << 20  # the automatic budget
    spec = ViewSpec(master(home), xsize=64)
    assert [cached.jpeg(spec, Look(), fn="f").source for _ in range(2)] == ["file", "image"]


def test_the_uncached_handler_computes_every_time(home: Path) -> None:
    payload = json.dumps({"type": "jpeg", "pid": "p", "fn": str(master(home)), "xsize": 32})
    first = legacy_frames(jobs.handle(payload.encode()))
    second = legacy_frames(jobs.handle(payload.encode()))
    assert first[3] == second[3]
    pixels = simplejpeg.decode_jpeg(first[3])
    assert pixels.shape[1] == 32 and np.ptp(pixels) > 0


def test_a_workers_renderer_obeys_its_configured_limits(home: Path) -> None:
    """What the worker's parser accepts under [limits], its cached renderer renders; and its
    frame-size limit reaches every decode (a 20000-pixel-wide request, a small frame cap)."""
    wide = LimitSettings(max_xsize_px=20000, max_zoom=128.0)
    payload = {"type": "jpeg", "pid": "p", "fn": str(master(home)), "xsize": 12000, "ysize": 8}
    worker = jobs.Jobs(renderer_for_worker({"gid": GID, "home": str(home)}, CacheSettings(), wide))
    for _ in range(2):  # computed, then the stored image: both under the same limits
        reply = worker(json.dumps(payload).encode())
        assert isinstance(reply, Success), reply
        assert simplejpeg.decode_jpeg(reply.parts[2]).shape == (8, 12000, 3)
    default = jobs.Jobs(renderer_for_worker({"gid": GID, "home": str(home)}, CacheSettings()))
    refused = default(json.dumps(payload).encode())
    assert isinstance(refused, Failure) and "above the limit of 10000" in refused.message

    tiny = LimitSettings(max_frame_pixels=1 << 16)
    small = jobs.Jobs(renderer_for_worker({"gid": GID, "home": str(home)}, CacheSettings(), tiny))
    for kind in ("jpeg", "spots", "meta"):
        request = {"type": kind, "pid": "p", "fn": str(master(home)), "xsize": 64}
        failed = small(json.dumps(request).encode())
        assert isinstance(failed, Failure) and failed.code == "too_large", (kind, failed)


def test_a_workers_bands_live_in_a_tier_of_their_own_within_its_budget(home: Path) -> None:
    """Bands are all one size: in their own tier a new band reuses an evicted one's memory."""
    budget = 64 << 20
    cached = renderer_for_worker(
        {"gid": GID, "home": str(home)}, CacheSettings(memory_budget_bytes=budget)
    )
    assert cached.bands is not cached.memory
    assert cached.bands.max_bytes + cached.memory.max_bytes == budget
    assert cached.bands.max_bytes == budget * renderer_module.BAND_BUDGET_FRACTION
    spec = ViewSpec(master(home), frame=2, xsize=64, zoom=4, segcol=1, segrow=1)
    cached.jpeg(spec, Look(), fn="f")
    assert cached.bands.nbytes > 0 and len(cached.bands) > 0
    assert all(key[1] == "rows" and key[0].kind == "frame" for key in cached.bands._entries)
    assert not any(isinstance(key, tuple) for key in cached.memory._entries)
    assert cached.release_idle() > 0 and cached.bands.nbytes == 0
