"""The whole service as it runs in production: real redis-server, proxy and manager processes,
real sockets, and (as root) real Unix users and ESAF groups owning real files."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis_process import RedisServer

from imageserver.local_service import LocalService

IS_ROOT = os.geteuid() == 0
ESAF_GROUP_PATTERN = "istest{esaf}"


def run_command(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@dataclass
class Accounts:
    """Test users and ESAF groups (root only); otherwise the current user, ESAF 0."""

    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def add_user(self, name: str) -> None:
        run_command("useradd", "--create-home", "--user-group", name)
        self.users.append(name)

    def add_esaf_group(self, esaf: int) -> int:
        name = ESAF_GROUP_PATTERN.format(esaf=esaf)
        # A test run killed before its clean-up leaves its group behind: take it over.
        subprocess.run(["groupdel", name], capture_output=True, timeout=60)
        run_command("groupadd", name)
        self.groups.append(name)
        return grp.getgrnam(name).gr_gid

    def remove_all(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=60)
        for name in self.groups:
            subprocess.run(["groupdel", name], capture_output=True, timeout=60)


class Chain(LocalService):
    """The local service with test settings: short deadline, two threads, test ESAF groups."""

    def __init__(
        self,
        directory: Path,
        redis_url: str,
        deadline_s: float = 3.0,
        *,
        idle_timeout_s: float = 600.0,
        max_workers: int = 64,
        threads: int = 2,
        workers_extra: str = "",
        web_port: int | None = None,
        redis_config: str = "",
    ) -> None:
        super().__init__(
            directory,
            redis_url,
            extra_config=(
                f'[identity]\nesaf_group_pattern = "{ESAF_GROUP_PATTERN}"\n'
                f"[workers]\nthreads = {threads}\n"
                f"request_deadline_s = {deadline_s}\nidle_timeout_s = {idle_timeout_s}\n"
                f"max_workers = {max_workers}\n" + workers_extra
            ),
            web_port=web_port,
            redis_config=redis_config,
        )

    def worker_pids(self) -> list[int]:
        """Workers are the children of the zygote, the manager's only child."""
        zygotes = children_of(self.manager_pid())
        return [pid for zygote in zygotes for pid in children_of(zygote)]

    def zygote_pid(self) -> int:
        (zygote,) = children_of(self.manager_pid())
        return zygote

    def log_text(self, role: str = "serve") -> str:
        return (self.directory / f"{role}.log").read_text(errors="replace")


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = proc_status(int(entry))
        except OSError:
            continue
        if int(status.get("PPid", "-1")) == parent and not status["State"].startswith("Z"):
            found.append(int(entry))
    return found


def proc_gid(pid: int) -> int:
    """The effective gid of a process (its /proc directory is root's: workers are not
    dumpable)."""
    return int(proc_status(pid)["Gid"].split()[1])


def is_alive(pid: int) -> bool:
    """Running or stopped, not gone and not a zombie waiting to be reaped."""
    try:
        return not proc_status(pid)["State"].startswith(("Z", "X"))
    except OSError:
        return False


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def wait_for(predicate: Any, timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def world_readable_dir() -> Path:
    """A directory every test user can traverse (pytest's own tmp dirs are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="imageserver-chain-", dir="/tmp"))
    directory.chmod(0o755)
    return directory


def place_file(source: Path, target: Path, *, gid: int, mode: int = 0o640) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    os.chown(target, 0, gid)
    target.chmod(mode)
    return target


def login_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@dataclass
class Ground:
    """What a module's chain tests stand on: accounts to add to, a data directory, a Redis."""

    accounts: Accounts
    data: Path
    redis: RedisServer


@contextlib.contextmanager
def ground(redis_dir: Path, *, password: str | None = None) -> Iterator[Ground]:
    """A started Redis, a world-readable data directory and an empty `Accounts`; all of it
    (and every account and group added) removed afterwards."""
    accounts = Accounts()
    data = world_readable_dir()
    redis = RedisServer(redis_dir, password=password)
    redis.start()
    try:
        yield Ground(accounts, data, redis)
    finally:
        redis.stop()
        accounts.remove_all()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def running_chain(redis_url: str, **options: Any) -> Iterator[Chain]:
    """A started `Chain` (options as its constructor's), stopped and removed afterwards."""
    chain = Chain(world_readable_dir(), redis_url, **options)
    try:
        chain.start()
        yield chain
    finally:
        chain.stop()
        shutil.rmtree(chain.directory, ignore_errors=True)
