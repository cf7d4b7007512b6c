"""RAPD's indexing contract, both sides: the command line a job gets and the result it gives.

A site with RAPD keeps ``rapd.index``; everyone else gets the built-in DIALS pipeline
(``python -m imageserver.indexing``). Both are invoked as

    COMMAND --json --json-fd J --progress-fd P [--detector D] [--hdf5_image_range A,B] FILE…

in a scratch directory of their own, write progress text lines to fd P and one JSON object to
fd J, and exit 0. A failure is still a JSON object, ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ERROR_CODES = {
    "bad_input": "the files or the frame range cannot be indexed as given",
    "too_few_spots": "spot finding found too few strong spots to index",
    "indexing_failed": "no lattice explains the spots",
    "dials_missing": "DIALS is not installed (dials.index is not on PATH)",
    "dials_failed": "a DIALS step failed",
    "timeout": "the job ran past its deadline",
    "cancelled": "the job was cancelled",
    "command_missing": "the indexing command is not installed",
    "command_failed": "the indexing command exited with an error",
    "no_result": "the indexing command wrote no valid JSON result",
    "internal": "a bug in the indexing program; details in its scratch directory",
}
"""Every error code a result can carry; the message says what happened in this job."""


@dataclass(frozen=True)
class IndexingInput:
    """What to index: image files (absolute paths), and a frame range for an HDF5 master."""

    files: tuple[Path, ...]
    image_range: tuple[int, int] | None = None
    """First and last frame (1-based, inclusive) of one HDF5 master; None: all of them."""
    detector: str | None = None
    """RAPD's detector name (``--detector``), when the site's RAPD needs one."""

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("no image files to index")
        if self.image_range is not None:
            first, last = self.image_range
            if not 1 <= first <= last:
                raise ValueError(f"bad frame range {first}-{last}")


def contract_arguments(job: IndexingInput, *, json_fd: int, progress_fd: int) -> list[str]:
    """The arguments after COMMAND, exactly as the legacy server gave them to ``rapd.index``."""
    argv = ["--json", "--json-fd", str(json_fd), "--progress-fd", str(progress_fd)]
    if job.detector:
        argv += ["--detector", job.detector]
    if job.image_range is not None:
        argv += ["--hdf5_image_range", f"{job.image_range[0]},{job.image_range[1]}"]
    return argv + [str(path) for path in job.files]


@dataclass(frozen=True)
class ContractCall:
    """A parsed contract command line: the job and the two file descriptors to write to."""

    job: IndexingInput
    json_fd: int
    progress_fd: int


def parse_contract_arguments(argv: Sequence[str]) -> ContractCall:
    """The program side of `contract_arguments`; raises ValueError on a malformed call."""
    parser = argparse.ArgumentParser(prog="imageserver-index", add_help=True, exit_on_error=False)
    parser.add_argument("--json", action="store_true", help="write the result as JSON (always)")
    parser.add_argument("--json-fd", type=int, required=True, help="fd for the JSON result")
    parser.add_argument("--progress-fd", type=int, required=True, help="fd for progress lines")
    parser.add_argument("--detector", default=None, help="detector name (RAPD's; informative)")
    parser.add_argument("--hdf5_image_range", default=None, help="A,B: frames of an HDF5 master")
    parser.add_argument("files", nargs="+", type=Path, help="image files")
    try:
        args = parser.parse_args(list(argv))
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from exc
    image_range = None
    if args.hdf5_image_range:
        try:
            first, last = (int(part) for part in args.hdf5_image_range.split(","))
        except ValueError:
            wrong = args.hdf5_image_range
            raise ValueError(f"--hdf5_image_range wants A,B, not {wrong!r}") from None
        image_range = (first, last)
    job = IndexingInput(tuple(args.files), image_range, args.detector)
    return ContractCall(job, args.json_fd, args.progress_fd)


def error_result(code: str, message: str, **details: Any) -> dict[str, Any]:
    """A failed job's result: one stable code and a message a user understands."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown indexing error code {code!r}")
    error: dict[str, Any] = {"code": code, "message": message}
    error.update(details)
    return {"error": error}


def is_error(result: dict[str, Any]) -> bool:
    return "error" in result
