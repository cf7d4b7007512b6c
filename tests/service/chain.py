"""The whole service as it runs in production: real redis-server, proxy and manager processes,
real sockets, and (as root) real Unix users and ESAF groups owning real files."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from imageserver.client import Reply, send_request
from imageserver.service.auth import (
    connect_session_store,
    generate_keypair,
    load_private_key,
    sign_isauth,
    write_session,
)

IS_ROOT = os.geteuid() == 0
ESAF_GROUP_PATTERN = "istest{esaf}"
START_DEADLINE_S = 60.0


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
        run_command("groupadd", name)
        self.groups.append(name)
        return grp.getgrnam(name).gr_gid

    def remove_all(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=60)
        for name in self.groups:
            subprocess.run(["groupdel", name], capture_output=True, timeout=60)


class Chain:
    """proxy + manager subprocesses configured in ``directory``; sessions signed here."""

    def __init__(self, directory: Path, redis_url: str, deadline_s: float = 3.0) -> None:
        self.directory = directory
        self.front = f"ipc://{directory}/front"
        self.back = f"ipc://{directory}/back"
        generate_keypair(directory / "signing.pem", directory / "session.pub.pem")
        self.private_key = load_private_key(directory / "signing.pem")
        self.config = directory / "imageserver.toml"
        self.config.write_text(
            "[proxy]\n"
            f'front_endpoint = "{self.front}"\nback_endpoint = "{self.back}"\n'
            "[session]\n"
            f'redis_url = "{redis_url}"\nredis_timeout_s = 0.5\n'
            f'public_key_path = "{directory / "session.pub.pem"}"\n'
            "[identity]\n"
            f'esaf_group_pattern = "{ESAF_GROUP_PATTERN}"\n'
            "[workers]\nthreads = 2\n"
            f"request_deadline_s = {deadline_s}\nidle_timeout_s = 600.0\n"
        )
        from imageserver.config import load_settings

        self.settings = load_settings(self.config)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.context = zmq.Context()

    def start(self) -> None:
        for role in ("proxy", "serve"):
            with (self.directory / f"{role}.log").open("wb") as log:
                self.processes[role] = subprocess.Popen(
                    [sys.executable, "-m", "imageserver", role, "--config", str(self.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                reply = self.request({"type": "jpeg", "pid": "probe"}, timeout_s=1.0)
            except TimeoutError:
                continue
            if reply.error is not None and "not active" in reply.error:
                return
        raise AssertionError(
            f"the service did not answer within {START_DEADLINE_S} s: {self.logs()}"
        )

    def check_alive(self) -> None:
        for role, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{role} exited ({process.returncode}): {self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.context.term()

    def session(self, user: str, esafs: list[int], **claims: Any) -> str:
        pid = secrets.token_hex(16)
        isauth = {"pid": pid, "uid": user, "allowedESAFs": esafs, **claims}
        text, signature = sign_isauth(isauth, self.private_key)
        write_session(connect_session_store(self.settings), pid, text, signature, 3600)
        return pid

    def request(self, request: dict[str, Any], timeout_s: float = 20.0) -> Reply:
        return send_request(self.front, request, timeout_s=timeout_s, context=self.context)

    def manager_pid(self) -> int:
        return self.processes["serve"].pid

    def worker_pids(self) -> list[int]:
        """Workers are the children of the zygote, the manager's only child."""
        zygotes = children_of(self.manager_pid())
        return [pid for zygote in zygotes for pid in children_of(zygote)]


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = proc_status(int(entry))
        except OSError:
            continue
        if int(status.get("PPid", "-1")) == parent:
            found.append(int(entry))
    return found


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
