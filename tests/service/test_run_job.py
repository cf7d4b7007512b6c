"""A worker's job boundary: deadlines, foreign exceptions and memory, each one typed reply."""

from __future__ import annotations

import logging
import time

import pytest

from imageserver.service import link
from imageserver.service.reply import Failure, Reply, Success
from imageserver.service.worker import run_job


class Handler:
    def __init__(self, outcome: Reply | BaseException) -> None:
        self.outcome = outcome
        self.calls = 0

    def __call__(self, payload: bytes) -> Reply:
        self.calls += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def release_idle(self) -> None:
        pass


def job(deadline_in_s: float = 10.0) -> link.Job:
    return link.Job(b"id", time.monotonic_ns() + int(deadline_in_s * 1e9), b"{}")


def test_a_job_whose_deadline_passed_while_queued_is_not_run() -> None:
    handler = Handler(Success((b"x",)))
    reply = run_job(handler, job(-0.001), 0)
    assert handler.calls == 0
    assert isinstance(reply, Failure) and reply.code == "timeout"


def test_a_foreign_exception_is_an_internal_error_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Handler(ValueError("SIZE1=-4 secret detail"))
    with caplog.at_level(logging.ERROR):
        reply = run_job(handler, job(), 0)
    assert isinstance(reply, Failure) and reply.code == "internal"
    assert "secret detail" not in reply.message and "ValueError" not in reply.message
    reference = reply.message.split("reference ")[1].split(")")[0]
    assert f"reference {reference}" in caplog.text and "secret detail" in caplog.text


def test_running_out_of_memory_fails_the_request_with_the_limit() -> None:
    reply = run_job(Handler(MemoryError()), job(), 512 << 20)
    assert isinstance(reply, Failure) and reply.code == "out_of_memory"
    assert "512 MiB" in reply.message
