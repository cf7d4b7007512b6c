"""`index` through the whole chain with a fake indexer of RAPD's contract (a shell script):
the result reply, progress on Redis, its own thread, the per-node limit, cancel by tag, and
the job's record read back with `job` requests by members of the ESAF only."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from chain import IS_ROOT, Chain, ground, login_name, place_file, running_chain, wait_for

from imageserver.client import Reply
from imageserver.sampledata.dataset import PILATUS_CBF

ESAF = 63001
OTHER_ESAF = 63002

FAKE_INDEXER = """#!/bin/bash
# A fake indexer with RAPD's contract: --json --json-fd J --progress-fd P FILE...
json_fd=$3
progress_fd=$5
shift 5
for file in "$@"; do last=$file; done
case "$last" in
  *slow*) eval "echo 'waiting for the beam' >&$progress_fd"; sleep 60 ;;
esac
eval "echo 'finding spots' >&$progress_fd"
eval "echo 'indexing' >&$progress_fd"
eval "printf '%s' '{\\"space_group\\": \\"P 21 21 21\\", \\"n_files\\": $#}' >&$json_fd"
"""


@dataclass
class IndexWorld:
    chain: Chain
    redis_url: str
    redis_port: int
    token: str
    esaf: int
    frame: Path
    slow_frame: Path
    colleague_token: str
    """Another user allowed the same ESAF (the same user when not root)."""
    stranger_token: str
    """A session allowed only another ESAF."""

    def request(self, timeout_s: float = 30.0, **fields: Any) -> Reply:
        job = {"pid": self.token, "esaf": self.esaf, **fields}
        return self.chain.request(job, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def world(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexWorld]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        if IS_ROOT:
            user = f"isidx{os.urandom(3).hex()}"
            base.accounts.add_user(user)
            colleague = f"isidc{os.urandom(3).hex()}"
            base.accounts.add_user(colleague)
            gid = base.accounts.add_esaf_group(ESAF)
            base.accounts.add_esaf_group(OTHER_ESAF)
            esaf = ESAF
        else:
            user, gid, esaf = login_name(), os.getgid(), 0
            colleague = user
        tools = base.data / "tools"
        tools.mkdir()
        tools.chmod(0o755)
        indexer = tools / "fake-index"
        indexer.write_text(FAKE_INDEXER)
        indexer.chmod(0o755)
        frame = place_file(sample_dir / PILATUS_CBF, base.data / "x" / "run_0001.cbf", gid=gid)
        slow = place_file(sample_dir / PILATUS_CBF, base.data / "x" / "slow_0001.cbf", gid=gid)
        for directory in (frame.parent,):
            os.chown(directory, 0 if IS_ROOT else os.getuid(), gid)
            directory.chmod(0o750)
        extra = (
            f'[index]\ncommand = "{indexer}"\nmax_jobs = 1\n'
            f'scratch_root = "{base.data / "scratch"}"\n'
            f'progress_hosts = "127.0.0.1:{base.redis.port},[::1]:{base.redis.port}"\n'
        )
        (base.data / "scratch").mkdir(mode=0o1777)
        (base.data / "scratch").chmod(0o1777)
        with running_chain(
            base.redis.url, deadline_s=20.0, workers_extra=f"long_request_deadline_s = 60\n{extra}"
        ) as chain:
            yield IndexWorld(
                chain=chain,
                redis_url=base.redis.url,
                redis_port=base.redis.port,
                token=chain.session(user, [esaf] if esaf else []),
                esaf=esaf,
                frame=frame,
                slow_frame=slow,
                colleague_token=chain.session(colleague, [esaf] if esaf else []),
                stranger_token=chain.session(user, [OTHER_ESAF]),
            )


def send_later(world: IndexWorld, **fields: Any) -> tuple[threading.Thread, list[Reply]]:
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(world.request(timeout_s=60, **fields)))
    thread.start()
    return thread, replies


def test_index_answers_with_the_indexers_result_and_publishes_progress(world: IndexWorld) -> None:
    subscriber = redis.Redis.from_url(world.redis_url).pubsub()
    subscriber.subscribe("index-progress")
    subscriber.get_message(timeout=1.0)  # the subscription's confirmation
    reply = world.request(
        type="index",
        fn1=str(world.frame),
        tag="first",
        progressPublisher="index-progress",
        progressAddress="127.0.0.1",
        progressPort=world.redis_port,
    )
    assert reply.error is None, reply.frames
    assert json.loads(reply.frames[2]) == {"space_group": "P 21 21 21", "n_files": 1}
    assert reply.job["tag"] == "first"
    messages = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (messages and messages[-1].get("done")):
        message = subscriber.get_message(timeout=0.5)
        if message and message["type"] == "message":
            messages.append(json.loads(message["data"]))
    assert {"progress": "finding spots", "done": False, "tag": "first"} in messages
    assert messages[-1] == {"done": True, "tag": "first"}
    subscriber.close()


@pytest.mark.parametrize(
    "address, port",
    [("192.0.2.1", 6379), ("127.0.0.1", 1)],  # TEST-NET; the allowed host at another port
)
def test_progress_goes_only_to_allowed_servers(world: IndexWorld, address: str, port: int) -> None:
    reply = world.request(
        type="index",
        fn1=str(world.frame),
        tag="elsewhere",
        progressPublisher="index-progress",
        progressAddress=address,
        progressPort=port,
    )
    assert reply.error is None
    refusal = f"progress server {address!r} port {port} is not in [index] progress_hosts"
    assert refusal in world.chain.log_text()


def test_a_running_index_job_holds_up_no_view_and_waits_and_cancels_by_tag(
    world: IndexWorld,
) -> None:
    slow, slow_reply = send_later(world, type="index", fn1=str(world.slow_frame), tag="slow")
    time.sleep(1.5)  # running now, on its own thread
    started = time.monotonic()
    view = world.request(type="jpeg", fn=str(world.frame), xsize=64)
    assert view.error is None and view.image is not None
    assert time.monotonic() - started < 10
    queued, queued_reply = send_later(world, type="index", fn1=str(world.frame), tag="queued")
    time.sleep(1.0)
    assert not queued_reply  # max_jobs = 1: it waits for the slow one
    cancel_queued = world.request(type="cancel", tag="queued")
    assert cancel_queued.error is None
    queued.join(10)
    assert queued_reply and queued_reply[0].error is not None
    assert "cancelled" in queued_reply[0].error
    cancel_slow = world.request(type="cancel", tag="slow")
    assert json.loads(cancel_slow.frames[2]) == {"cancelled": 1}
    slow.join(15)
    assert slow_reply and slow_reply[0].error is None
    assert json.loads(slow_reply[0].frames[2])["error"]["code"] == "cancelled"
    after = world.request(type="index", fn1=str(world.frame), tag="after")
    assert after.error is None and "space_group" in json.loads(after.frames[2])


def test_bad_index_requests_are_refused(world: IndexWorld) -> None:
    assert world.request(type="index").error == (
        "Missing image file (fn1 or files) for an index request"
    )
    missing = world.request(type="index", fn1="/no/such/file.cbf", tag="m")
    assert missing.error == "/no/such/file.cbf: file not found"
    relative = world.request(type="index", files=["x.cbf"], tag="r")
    assert relative.error == "x.cbf: index files must be absolute paths"


def job_record(world: IndexWorld, tag: str, token: str | None = None) -> dict[str, Any]:
    reply = world.chain.request(
        {"type": "job", "pid": token or world.token, "esaf": world.esaf, "tag": tag}
    )
    assert reply.error is None, reply.error
    assert reply.job["tag"] == tag
    return dict(json.loads(reply.frames[2]))


def test_job_records_follow_a_job_for_every_member_of_the_esaf(world: IndexWorld) -> None:
    slow, slow_reply = send_later(world, type="index", fn1=str(world.slow_frame), tag="watched")
    try:
        waiting, waiting_reply = check_records_while_running(world)
    finally:
        world.request(type="cancel", tag="watched")  # frees the node's one slot
        slow.join(20)
    waiting.join(20)
    assert slow_reply and waiting_reply and waiting_reply[0].error is None

    def ended(tag: str) -> dict[str, Any] | None:
        record = job_record(world, tag, world.colleague_token)
        return record if record["state"] not in ("queued", "running") else None

    cancelled = wait_for(lambda: ended("watched"), timeout_s=10, what="the cancelled record")
    assert cancelled["state"] == "cancelled" and cancelled["finished"] >= cancelled["started"]
    done = wait_for(lambda: ended("next"), timeout_s=10, what="the finished record")
    assert done["state"] == "done"
    assert done["result"] == {"space_group": "P 21 21 21", "n_files": 1}
    assert done["progress"] == ["finding spots", "indexing"]


def check_records_while_running(world: IndexWorld) -> tuple[threading.Thread, list[Reply]]:
    """With "watched" running: its record, a job queued behind it, who may read them."""

    def progressed() -> dict[str, Any] | None:
        reply = world.request(type="job", tag="watched")  # unknown until a worker takes it up
        record = json.loads(reply.frames[2]) if reply.error is None else {}
        return record if record.get("progress") else None

    running = wait_for(progressed, timeout_s=20, what="the first progress line")
    assert running["state"] == "running"
    assert running["inputs"] == {"files": [str(world.slow_frame)]}
    assert "waiting for the beam" in running["progress"][-1]
    waiting, waiting_reply = send_later(world, type="index", fn1=str(world.frame), tag="next")

    def waiting_in_line() -> dict[str, Any] | None:  # max_jobs = 1: "next" waits
        job = {"type": "job", "pid": world.colleague_token, "esaf": world.esaf, "tag": "next"}
        reply = world.chain.request(job)
        return json.loads(reply.frames[2]) if reply.error is None else None

    queued = wait_for(waiting_in_line, timeout_s=10, what="the queued job's answer")
    assert (queued["state"], queued["position"]) == ("queued", 1)
    seen_by_colleague = job_record(world, "watched", world.colleague_token)
    assert seen_by_colleague["state"] == "running"
    stranger = world.chain.request(
        {"type": "job", "pid": world.stranger_token, "esaf": world.esaf, "tag": "watched"}
    )
    if IS_ROOT:
        assert stranger.error is not None and "not authorized" in stranger.error
        own_esaf = world.chain.request(
            {"type": "job", "pid": world.stranger_token, "esaf": OTHER_ESAF, "tag": "watched"}
        )
        assert own_esaf.error is not None and "no index job" in own_esaf.error
    return waiting, waiting_reply


def test_job_requests_need_a_tag_and_a_known_job(world: IndexWorld) -> None:
    untagged = world.request(type="job")
    assert untagged.error == "Missing tag for a job request: it names the index job"
    unknown = world.request(type="job", tag="never-started")
    assert unknown.error == "no index job 'never-started' for this ESAF"
    missing = world.request(type="index", fn1="/no/such/file.cbf", tag="missing-file")
    assert missing.error is not None
    failed = job_record(world, "missing-file")
    assert failed["state"] == "failed" and failed["error"]["code"] == "file_missing"
