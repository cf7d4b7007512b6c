"""What the soak stands on: users and ESAF groups, sample files they may and may not read,
a Redis, the service with two nodes, signed sessions, and the valid requests of the mix.

As root, three throw-away users share two throw-away ESAF groups: two users in ESAF A, one in
ESAF B, each with sessions of their own; B's directory is the "file of another ESAF". Not
root, the invoking user is the one identity (ESAF 0) and the foreign file is one of mode 000.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService
from imageserver.sampledata.dataset import (
    EIGER4M16_STEM,
    EIGER16M_STEM,
    MARCCD_BE,
    MARCCD_LE,
    PILATUS_CBF,
    write_sample_data,
)
from soak_mix import Session, Target

ESAF_A, ESAF_B = 69101, 69102
GROUP_PATTERN = "issoakesaf{esaf}"
NODES = ("serve", "serve2")
SESSIONS_PER_USER = 3
N_FRAMES = 4
SERVICE_CONFIG = (
    f'[identity]\nesaf_group_pattern = "{GROUP_PATTERN}"\n'
    "[workers]\nrequest_deadline_s = 10.0\nidle_timeout_s = 3600.0\n"
    '[metrics]\nbroker = ""\nmanager = ""\nweb = ""\n'  # two nodes on one host: no ports
)


class Accounts:
    """Throw-away users and ESAF groups (root), removed by `remove_all`."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.groups: list[str] = []

    def add_user(self) -> str:
        name = f"issoak{os.urandom(3).hex()}"
        _run("useradd", "--create-home", "--user-group", name)
        self.users.append(name)
        return name

    def add_esaf_group(self, esaf: int) -> int:
        name = GROUP_PATTERN.format(esaf=esaf)
        # a soak killed before its clean-up leaves its group behind: take it over
        subprocess.run(["groupdel", name], capture_output=True, timeout=60, check=False)
        _run("groupadd", name)
        self.groups.append(name)
        return grp.getgrnam(name).gr_gid

    def remove_all(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        for name in self.groups:
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        self.users.clear()
        self.groups.clear()


class SoakWorld:
    """Everything the soak starts, in one temporary directory; `close` removes it all."""

    def __init__(self) -> None:
        self.is_root = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="imageserver-soak-", dir="/tmp"))
        self.directory.chmod(0o755)  # every user traverses it to the data
        self.accounts = Accounts()
        self.redis = EmbeddedRedis(self.directory / "redis", password=secrets.token_hex(12))
        self.service: LocalService | None = None

    def start(self) -> Target:
        """Users, files, Redis and both nodes; returns what the mix may ask for."""
        if self.is_root:
            gid_a, gid_b = (self.accounts.add_esaf_group(e) for e in (ESAF_A, ESAF_B))
            data_a, data_b = self._data_dir("a", gid_a), self._data_dir("b", gid_b)
            members = [(self.accounts.add_user(), ESAF_A, data_a, data_b / MARCCD_BE)]
            members.append((self.accounts.add_user(), ESAF_A, data_a, data_b / MARCCD_BE))
            members.append((self.accounts.add_user(), ESAF_B, data_b, data_a / MARCCD_BE))
            foreign_esaf = ESAF_B + 1  # listed by no session
        else:
            data = self._data_dir("a", os.getgid())
            unreadable = data / "unreadable.mccd"
            shutil.copy2(data / MARCCD_BE, unreadable)
            unreadable.chmod(0)
            members = [(pwd.getpwuid(os.getuid()).pw_name, 0, data, unreadable)]
            foreign_esaf = ESAF_B
        self.redis.start()
        self.service = LocalService(
            self.directory / "service", self.redis.url, extra_config=SERVICE_CONFIG
        )
        self.service.start()
        self.service.add_node(NODES[1])
        sessions = [
            Session(
                self.service.session(login, [esaf] if esaf else []),
                esaf,
                login,
                tuple(sample_views(data)),
                str(foreign),
                str(data / "no_such_0001.cbf"),
            )
            for login, esaf, data, foreign in members
            for _ in range(SESSIONS_PER_USER)
        ]
        return Target(sessions=sessions, foreign_esaf=foreign_esaf)

    def _data_dir(self, name: str, gid: int) -> Path:
        """A directory of sample files readable by one ESAF group only (as root)."""
        data = self.directory / name
        write_sample_data(data, n_frames=N_FRAMES, full_size=False)
        for path in [data, *data.iterdir()]:
            _own(path, gid, 0o750 if path.is_dir() else 0o640)
        return data

    def close(self) -> None:
        if self.service is not None:
            self.service.stop()
        self.redis.stop()
        self.accounts.remove_all()
        shutil.rmtree(self.directory, ignore_errors=True)


def sample_views(data: Path) -> list[dict[str, object]]:
    """The valid requests: views of several sizes, frames and files, and the other reads."""
    eiger16m = str(data / f"{EIGER16M_STEM}_master.h5")
    eiger4m = str(data / f"{EIGER4M16_STEM}_master.h5")
    files = [(eiger16m, N_FRAMES), (eiger4m, N_FRAMES // 2)]
    files += [(str(data / PILATUS_CBF), 1), (str(data / MARCCD_LE), 1)]
    views: list[dict[str, object]] = []
    for fn, frames in files:
        for frame in range(1, frames + 1):
            for xsize in (64, 256, 512, 1024):
                views.append({"type": "jpeg", "fn": fn, "frame": frame, "xsize": xsize})
            views.append({"type": "meta", "fn": fn, "frame": frame})
            views.append({"type": "spots", "fn": fn, "frame": frame})
    for segcol, segrow in ((0, 0), (1, 1), (0.5, 1.5)):
        tile = {"zoom": 2, "segcol": segcol, "segrow": segrow, "contrast": 0, "wval": -1}
        views.append({"type": "jpeg", "fn": eiger16m, "frame": 1, "xsize": 256, **tile})
    views += [{"type": "list", "dir": str(data)}, {"type": "latest", "dir": str(data)}] * 3
    views.append({"type": "analysis", "fn": eiger16m, "frame": 1})
    return views


def _own(path: Path, gid: int, mode: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
    path.chmod(mode)


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)
