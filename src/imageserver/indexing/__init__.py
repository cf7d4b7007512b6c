"""Autoindexing: the `index` job's command contract (RAPD's), its DIALS default, its runner.

`run_indexing` runs any command that keeps the contract (`contract`) in a private scratch
directory and returns its result; ``python -m imageserver.indexing`` is the built-in command,
which drives DIALS (`pipeline`). docs/indexing.md describes all three.
"""

from imageserver.errors import IndexingInputError
from imageserver.indexing.contract import ERROR_CODES, IndexingInput, error_result
from imageserver.indexing.inputs import (
    build_input,
    parse_frames,
    rapd_detector,
)
from imageserver.indexing.runner import (
    DEFAULT_COMMAND,
    IndexingOutcome,
    minimal_environment,
    run_indexing,
)

__all__ = [
    "DEFAULT_COMMAND",
    "ERROR_CODES",
    "IndexingInput",
    "IndexingInputError",
    "IndexingOutcome",
    "build_input",
    "error_result",
    "minimal_environment",
    "parse_frames",
    "rapd_detector",
    "run_indexing",
]
