"""Batch thumbnails of every frame of every input: the job beamlines script `adxv -sa` for.

Parallel over processes (spawned, so no HDF5 or numba state crosses a fork), resumable
(an output newer than its source is skipped; outputs are written atomically, so an
interrupted run never leaves a truncated file that looks done), and it reports every
failure at the end instead of stopping at the first.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from imageserver.allocator import tune_allocator
from imageserver.errors import ImageServerError, UnknownFormatError
from imageserver.formats import read_meta
from imageserver.imaging.reduce import warm_up
from imageserver.render import Look, ViewSpec, render_file

_DATA_FILE = re.compile(r"^(?P<stem>.+)_data_\d{6}\.h5$", re.IGNORECASE)
_MASTER_SUFFIX = "_master"
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")


@dataclass(frozen=True)
class ThumbnailTask:
    source: Path
    frame: int
    output: Path


@dataclass
class ThumbnailReport:
    """What a run did; failures are (source and frame, reason) pairs."""

    written: int = 0
    up_to_date: int = 0
    ignored: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.written} written, {self.up_to_date} up to date, "
            f"{len(self.failures)} failed, {len(self.ignored)} ignored (not images)"
        ]
        lines += [f"  FAILED {where}: {reason}" for where, reason in self.failures]
        return "\n".join(lines)


def make_thumbnails(
    inputs: Iterable[Path],
    *,
    out_dir: Path,
    size_px: int = 256,
    look: Look | None = None,
    jobs: int | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> ThumbnailReport:
    """Render every frame of every input to ``out_dir``; never raises for a bad input."""
    look = look or Look()
    report = ThumbnailReport()
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[ThumbnailTask] = []
    for source, is_explicit in _expand_inputs(inputs):
        try:
            tasks.extend(_tasks_for(source, out_dir))
        except UnknownFormatError as exc:
            if is_explicit:
                report.failures.append((str(source), str(exc)))
            else:
                report.ignored.append(source)
        except ImageServerError as exc:
            report.failures.append((str(source), str(exc)))
    pending = [task for task in tasks if force or not _is_up_to_date(task)]
    report.up_to_date = len(tasks) - len(pending)
    if not pending:
        return report
    workers = max(1, min(jobs or os.cpu_count() or 1, len(pending)))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures: dict[Future[None], ThumbnailTask] = {
            pool.submit(_render_one, task, size_px, look): task for task in pending
        }
        bar = tqdm(total=len(futures), unit="frame", disable=not show_progress)
        for future in as_completed(futures):
            task = futures[future]
            try:
                future.result()
                report.written += 1
            except ImageServerError as exc:
                report.failures.append((f"{task.source} frame {task.frame}", str(exc)))
            except Exception as exc:  # a bug or a killed worker: report it, keep going
                report.failures.append((f"{task.source} frame {task.frame}", f"internal: {exc!r}"))
            bar.update(1)
        bar.close()
    return report


def _init_worker() -> None:
    tune_allocator()
    warm_up()


def _render_one(task: ThumbnailTask, size_px: int, look: Look) -> None:
    image, _ = render_file(ViewSpec(path=task.source, frame=task.frame, xsize=size_px), look)
    partial = task.output.with_name(f".{task.output.name}.{os.getpid()}.part")
    partial.write_bytes(image.data)
    os.replace(partial, task.output)


def _expand_inputs(inputs: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """Files as given (explicit) and the files of directories, minus Eiger data files
    whose master is present (the master already counts all their frames)."""
    for path in inputs:
        if not path.is_dir():
            yield path, True
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        masters = {p.parent / p.name[: -len("_master.h5")] for p in files if _is_master(p)}
        for file in files:
            match = _DATA_FILE.match(file.name)
            if match and file.parent / match["stem"] in masters:
                continue
            yield file, False


def _is_master(path: Path) -> bool:
    return path.name.lower().endswith("_master.h5")


def _tasks_for(source: Path, out_dir: Path) -> list[ThumbnailTask]:
    meta = read_meta(source)
    stem = _output_stem(source)
    if meta.frame_count == 1:
        return [ThumbnailTask(source, meta.first_frame, out_dir / f"{stem}.jpg")]
    return [
        ThumbnailTask(source, number, out_dir / f"{stem}_{number:06d}.jpg")
        for number in range(meta.first_frame, meta.last_frame + 1)
    ]


def _output_stem(source: Path) -> str:
    name = source.name
    for suffix in _COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    stem = Path(name).stem
    if stem.lower().endswith(_MASTER_SUFFIX):
        stem = stem[: -len(_MASTER_SUFFIX)]
    return stem


def _is_up_to_date(task: ThumbnailTask) -> bool:
    try:
        return task.output.stat().st_mtime_ns >= task.source.stat().st_mtime_ns
    except OSError:
        return False
