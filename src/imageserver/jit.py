"""numba compilation for this package: GIL released, cached on disk where it can be.

numba looks for a writable cache directory in this order: ``$NUMBA_CACHE_DIR``,
``__pycache__`` beside the compiled function's file, then the user's cache
(``~/.cache/numba``); with none it raises at import. A service user with no home must not
lose the imaging core for that: it compiles in memory instead (about 5 s per process).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numba

log = logging.getLogger(__name__)


def njit_cached(signatures: list[Any] | None, **options: Any) -> Callable[[Any], Any]:
    """``numba.njit(signatures, nogil=True)``, disk-cached if possible, in memory otherwise."""

    def decorate(function: Any) -> Any:
        try:
            return numba.njit(signatures, nogil=True, cache=True, **options)(function)
        except RuntimeError as exc:
            if "cannot cache" not in str(exc):
                raise
            _warn_no_disk_cache()
            return numba.njit(signatures, nogil=True, cache=False, **options)(function)

    return decorate


@functools.cache
def _warn_no_disk_cache() -> None:
    """Said once per process, not once per function."""
    log.warning(
        "numba disk cache unavailable (no writable $NUMBA_CACHE_DIR, __pycache__ or user"
        " cache directory): compiling the imaging kernels in memory"
    )
