"""JobBoard: index job records in a real Redis as an ESAF group's ACL user, and in memory."""

from __future__ import annotations

import json
import time

import pytest
import redis
from redis_process import RedisServer

from imageserver.cache.acl import CacheAccess
from imageserver.cache.shared import RedisLink
from imageserver.config import CacheSettings
from imageserver.errors import JobUnknownError
from imageserver.service import job_board
from imageserver.service.job_board import JobBoard

GID, OTHER_GID = 64001, 64002


class Group:
    def __init__(self, gid: int) -> None:
        self.gid = gid


def group_link(access: CacheAccess, url: str, gid: int) -> RedisLink:
    extras = access.worker_extras(Group(gid))["cache"]
    return RedisLink.connect(
        extras["url"],
        prefix=access.settings.key_prefix,
        timeout_s=1.0,
        retry_s=0.1,
        username=extras["user"],
        password=extras["password"],
    )


@pytest.fixture
def access(redis_server: RedisServer) -> CacheAccess:
    return CacheAccess(CacheSettings(redis_url=redis_server.url))


def test_a_record_follows_the_job_and_is_read_by_another_worker_of_the_esaf(
    access: CacheAccess, redis_server: RedisServer
) -> None:
    writer = JobBoard(group_link(access, redis_server.url, GID), GID, ttl_s=600)
    reader = JobBoard(group_link(access, redis_server.url, GID), GID, ttl_s=600)
    record = writer.start("web-1", {"files": ["/data/a_0001.cbf"]})
    running = reader.read("web-1")
    assert running["state"] == "running" and running["inputs"] == {"files": ["/data/a_0001.cbf"]}
    assert running["progress"] == [] and "result" not in running
    writer.progress(record, "finding spots")
    writer.progress(record, "indexing")  # within WRITE_INTERVAL_S: written a moment later
    time.sleep(job_board.WRITE_INTERVAL_S + 0.3)
    assert reader.read("web-1")["progress"] == ["finding spots", "indexing"]
    writer.finish(record, "done", result={"space_group": "P 21 21 21"})
    done = reader.read("web-1")
    assert done["state"] == "done" and done["result"] == {"space_group": "P 21 21 21"}
    assert done["finished"] >= done["started"]
    admin = redis.Redis.from_url(redis_server.url)
    (name,) = admin.keys(f"{access.settings.key_prefix}:{GID}:job:*")
    assert 0 < admin.ttl(name) <= 600


def test_another_esafs_worker_cannot_read_the_record(
    access: CacheAccess, redis_server: RedisServer
) -> None:
    writer = JobBoard(group_link(access, redis_server.url, GID), GID, ttl_s=600)
    writer.finish(writer.start("secret", {"files": []}), "done", result={"cell": [1, 2, 3]})
    stranger = JobBoard(group_link(access, redis_server.url, OTHER_GID), OTHER_GID, ttl_s=600)
    with pytest.raises(JobUnknownError):
        stranger.read("secret")
    # Nor by naming the other group's key: its Redis user may not touch it.
    other_link = group_link(access, redis_server.url, OTHER_GID)
    admin = redis.Redis.from_url(redis_server.url)
    (name,) = admin.keys(f"{access.settings.key_prefix}:{GID}:job:*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        other_link.client.get(name)


def test_without_redis_the_worker_still_answers_for_its_own_jobs(
    access: CacheAccess, redis_server: RedisServer
) -> None:
    board = JobBoard(group_link(access, redis_server.url, GID), GID, ttl_s=600)
    record = board.start("kept", {"files": []})
    redis_server.stop()
    board.progress(record, "finding spots")
    board.finish(record, "cancelled", result={"error": {"code": "cancelled", "message": "x"}})
    found = board.read("kept")  # the shared copy is gone; this worker's own one answers
    assert found["state"] == "cancelled" and found["progress"] == ["finding spots"]
    with pytest.raises(JobUnknownError):
        board.read("never-started")


def test_a_running_record_whose_worker_stopped_updating_it_reads_as_failed(
    access: CacheAccess, redis_server: RedisServer
) -> None:
    link = group_link(access, redis_server.url, GID)
    writer = JobBoard(link, GID, ttl_s=600)
    writer.start("orphan", {"files": []})
    admin = redis.Redis.from_url(redis_server.url)
    (name,) = admin.keys(f"{access.settings.key_prefix}:{GID}:job:*")
    document = json.loads(admin.get(name))
    document["updated"] -= job_board.STALE_S + 1  # as if its worker died that long ago
    admin.set(name, json.dumps(document))
    reader = JobBoard(group_link(access, redis_server.url, GID), GID, ttl_s=600)
    orphan = reader.read("orphan")
    assert orphan["state"] == "failed" and orphan["error"]["code"] == "worker_failed"
    document["updated"] = "garbage"  # a record written by a misbehaving worker of the group
    admin.set(name, json.dumps(document))
    assert reader.read("orphan")["state"] == "failed"


def test_progress_keeps_the_last_lines_each_cut_to_length() -> None:
    board = JobBoard(None, GID, ttl_s=600)
    record = board.start("long", {"files": []})
    for n in range(job_board.MAX_PROGRESS_LINES + 10):
        board.progress(record, f"line {n} " + "x" * 1000)
    lines = board.read("long")["progress"]
    assert len(lines) == job_board.MAX_PROGRESS_LINES
    assert lines[0].startswith("line 10 ") and len(lines[0]) == job_board.MAX_LINE_CHARS
