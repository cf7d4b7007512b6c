"""A deadline for every indexing test: a hung child fails the test instead of blocking it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

TEST_DEADLINE_S = 30
"""Per test; a module may set its own ``TEST_DEADLINE_S`` (the DIALS acceptance run does)."""


class TestDeadlineError(Exception):
    """The test ran past its deadline."""


@pytest.fixture(autouse=True)
def deadline(request: pytest.FixtureRequest) -> Iterator[None]:
    seconds = int(getattr(request.module, "TEST_DEADLINE_S", TEST_DEADLINE_S))

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TestDeadlineError(f"{request.node.name} ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
