"""``python -m imageserver.indexing`` (``imageserver-index``): the built-in indexer.

Runs the DIALS pipeline in the current directory (the caller's scratch directory), writes
progress lines to ``--progress-fd`` and one JSON object to ``--json-fd``, and exits 0 whatever
happened to the job; only a malformed command line exits 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from imageserver.errors import IndexingError, Terminated
from imageserver.indexing.contract import error_result, parse_contract_arguments
from imageserver.indexing.pipeline import (
    install_termination_handler,
    run_pipeline,
)

CRASH_LOG = "indexing-error.log"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        call = parse_contract_arguments(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"imageserver-index: {exc}", file=sys.stderr)
        return 2
    install_termination_handler()
    workdir = Path.cwd()

    def progress(line: str) -> None:
        _write(call.progress_fd, line.replace("\n", " ") + "\n")

    try:
        result = run_pipeline(call.job, progress, workdir=workdir)
    except IndexingError as exc:
        result = error_result(exc.result_code, str(exc))
    except Terminated:
        result = error_result("cancelled", "the indexing job was stopped")
    except Exception as exc:  # the one outermost handler: a result, never a traceback
        (workdir / CRASH_LOG).write_text(traceback.format_exc())
        result = error_result("internal", f"the indexing program failed ({type(exc).__name__})")
    if "error" in result:
        progress(f"failed: {result['error']['message']}")
    _write(call.json_fd, json.dumps(result) + "\n")
    _close(call.json_fd)
    _close(call.progress_fd)
    return 0


def _write(fd: int, text: str) -> None:
    """Write all of ``text``; a reader that went away (the job was stopped) is not an error."""
    data = text.encode()
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
