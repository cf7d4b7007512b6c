"""Unix identities with real users, groups and files (needs root; CI runs as root).

Privileges are dropped in a forked child, which reports what it sees through a pipe.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imageserver.config import IdentitySettings, Settings
from imageserver.errors import AccessDeniedError, WorkerError
from imageserver.service.identity import Identity, drop_privileges, resolve_identity

CHILD_DEADLINE_S = 20.0
ESAF_WITH_ACCOUNT = 41001
ESAF_GROUP_ONLY = 41002
ESAF_AT_THRESHOLD = 40000
ESAF_WITHOUT_GROUP = 41003

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="creating Unix users and switching uid need root (CI runs as root)"
)


@dataclass(frozen=True)
class Accounts:
    """Throw-away users, ESAF groups and files, named with a random prefix."""

    settings: Settings
    base: Path
    user: str
    user_home: Path
    esaf_home: Path
    root_group_user: str
    file_of_esaf_a: Path
    file_of_esaf_b: Path

    def uid(self, name: str) -> int:
        return int(_run("id", "-u", name).strip())

    def gid_of_user(self, name: str) -> int:
        return int(_run("id", "-g", name).strip())

    def gid_of_esaf(self, esaf: int) -> int:
        return grp.getgrnam(self.settings.identity.esaf_group_pattern.format(esaf=esaf)).gr_gid


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    prefix = f"istest_{secrets.token_hex(3)}"
    pattern = f"{prefix}_e{{esaf}}"
    base = Path(tempfile.mkdtemp(prefix="istest-"))
    base.chmod(0o755)  # every test user must be able to walk into it
    users: list[str] = []
    groups: list[str] = []
    try:
        for esaf in (ESAF_AT_THRESHOLD, ESAF_WITH_ACCOUNT, ESAF_GROUP_ONLY):
            groups.append(pattern.format(esaf=esaf))
            _run("groupadd", groups[-1])
        user, user_home = f"{prefix}_u", base / "home-u"
        users.append(user)
        groups.append(user)  # useradd -U makes the user's own group
        _run("useradd", "-M", "-U", "-d", str(user_home), "-s", "/usr/sbin/nologin", user)
        user_home.mkdir(mode=0o700)
        shutil.chown(user_home, user, user)
        esaf_account = pattern.format(esaf=ESAF_WITH_ACCOUNT)
        esaf_home = base / "esaf-a"
        users.append(esaf_account)
        _run(
            "useradd",
            "-M",
            "-g",
            esaf_account,
            "-d",
            str(esaf_home),
            "-s",
            "/usr/sbin/nologin",
            esaf_account,
        )
        esaf_home.mkdir()
        shutil.chown(esaf_home, esaf_account, esaf_account)
        esaf_home.chmod(0o770)
        root_group_user = f"{prefix}_r"
        users.append(root_group_user)
        _run(
            "useradd", "-M", "-g", "0", "-d", str(base), "-s", "/usr/sbin/nologin", root_group_user
        )
        files = {}
        for esaf in (ESAF_WITH_ACCOUNT, ESAF_GROUP_ONLY):
            path = base / f"data-{esaf}.txt"
            path.write_text(f"frames of esaf {esaf}")
            shutil.chown(path, "root", pattern.format(esaf=esaf))
            path.chmod(0o640)
            files[esaf] = path
        yield Accounts(
            settings=Settings(identity=IdentitySettings(esaf_group_pattern=pattern)),
            base=base,
            user=user,
            user_home=user_home,
            esaf_home=esaf_home,
            root_group_user=root_group_user,
            file_of_esaf_a=files[ESAF_WITH_ACCOUNT],
            file_of_esaf_b=files[ESAF_GROUP_ONLY],
        )
    finally:
        for name in users:
            subprocess.run(["userdel", name], capture_output=True, check=False)
        for name in groups:
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


# -- resolving ------------------------------------------------------------------------------------


def test_no_esaf_gives_the_users_own_group_and_home(accounts: Accounts) -> None:
    identity = resolve_identity(accounts.user, 0, accounts.settings)
    assert identity == Identity(
        uid=accounts.uid(accounts.user),
        gid=accounts.gid_of_user(accounts.user),
        home=str(accounts.user_home),
        login=accounts.user,
        esaf=0,
    )


def test_an_esaf_at_the_threshold_still_uses_the_users_group(accounts: Accounts) -> None:
    """Legacy rule: only esaf > 40000 switches to the ESAF's group, even if e40000 exists."""
    identity = resolve_identity(accounts.user, ESAF_AT_THRESHOLD, accounts.settings)
    assert identity.gid == accounts.gid_of_user(accounts.user)
    assert identity.gid != accounts.gid_of_esaf(ESAF_AT_THRESHOLD)
    assert identity.home == str(accounts.user_home)


def test_an_esaf_above_the_threshold_uses_its_group_and_account_home(accounts: Accounts) -> None:
    identity = resolve_identity(accounts.user, ESAF_WITH_ACCOUNT, accounts.settings)
    assert identity.uid == accounts.uid(accounts.user)
    assert identity.gid == accounts.gid_of_esaf(ESAF_WITH_ACCOUNT)
    assert identity.home == str(accounts.esaf_home)
    assert identity.credentials == (identity.uid, identity.gid)


def test_an_esaf_group_without_an_account_keeps_the_users_home(accounts: Accounts) -> None:
    identity = resolve_identity(accounts.user, ESAF_GROUP_ONLY, accounts.settings)
    assert identity.gid == accounts.gid_of_esaf(ESAF_GROUP_ONLY)
    assert identity.home == str(accounts.user_home)


def test_unknown_user_and_unknown_esaf_group_are_refused(accounts: Accounts) -> None:
    with pytest.raises(
        AccessDeniedError, match=r"^unknown user 'istest_nobody': no such Unix account$"
    ):
        resolve_identity("istest_nobody", 0, accounts.settings)
    with pytest.raises(AccessDeniedError) as caught:
        resolve_identity("a\x00b", 0, accounts.settings)
    assert str(caught.value) == "unknown user 'a\x00b': no such Unix account"
    group = accounts.settings.identity.esaf_group_pattern.format(esaf=ESAF_WITHOUT_GROUP)
    with pytest.raises(AccessDeniedError) as caught:
        resolve_identity(accounts.user, ESAF_WITHOUT_GROUP, accounts.settings)
    assert str(caught.value) == f"no Unix group '{group}' for esaf {ESAF_WITHOUT_GROUP}"


def test_root_is_refused(accounts: Accounts) -> None:
    with pytest.raises(AccessDeniedError) as caught:
        resolve_identity("root", 0, accounts.settings)
    assert (
        str(caught.value) == "refusing to run requests as root (user 'root', esaf 0: uid 0, gid 0)"
    )
    with pytest.raises(AccessDeniedError, match=r"^refusing to run requests as root"):
        resolve_identity(accounts.root_group_user, 0, accounts.settings)


def test_identities_are_hashable_values(accounts: Accounts) -> None:
    first = resolve_identity(accounts.user, ESAF_WITH_ACCOUNT, accounts.settings)
    again = resolve_identity(accounts.user, ESAF_WITH_ACCOUNT, accounts.settings)
    other = resolve_identity(accounts.user, ESAF_GROUP_ONLY, accounts.settings)
    assert {first: 1, again: 2, other: 3} == {first: 2, other: 3}


# -- dropping privileges, in a forked child -------------------------------------------------------


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child and return what it reported (or its error)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os.close(read_fd)
        try:
            report = work()
        except BaseException as exc:
            report = {"error": type(exc).__name__, "message": str(exc)}
        with os.fdopen(write_fd, "w") as stream:
            json.dump(report, stream)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as stream:
        if not select.select([stream], [], [], CHILD_DEADLINE_S)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child did not report within {CHILD_DEADLINE_S} s")
        text = stream.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(text)


def switch_to(identity: Identity) -> dict[str, Any]:
    drop_privileges(identity)
    return {"uid": os.getuid()}


def try_read(path: Path) -> str:
    try:
        return path.read_text()
    except PermissionError:
        return "denied"


def test_a_worker_keeps_only_its_esaf_group(accounts: Accounts) -> None:
    identity = resolve_identity(accounts.user, ESAF_WITH_ACCOUNT, accounts.settings)

    def work() -> dict[str, Any]:
        # As the legacy server did (S1), start with root's groups plus ESAF B's.
        os.setgroups([0, accounts.gid_of_esaf(ESAF_GROUP_ONLY)])
        drop_privileges(identity)
        return {
            "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
            "groups": os.getgroups(),
            "cwd": os.getcwd(),
            "home_env": os.environ["HOME"],
            "a": try_read(accounts.file_of_esaf_a),
            "b": try_read(accounts.file_of_esaf_b),
        }

    report = in_child(work)
    assert report["ids"] == [identity.uid, identity.uid, identity.gid, identity.gid]
    assert report["groups"] == [identity.gid]
    assert report["cwd"] == str(accounts.esaf_home) == report["home_env"]
    assert report["a"] == f"frames of esaf {ESAF_WITH_ACCOUNT}"
    assert report["b"] == "denied"


def test_a_worker_without_esaf_reads_neither_esafs_files(accounts: Accounts) -> None:
    identity = resolve_identity(accounts.user, 0, accounts.settings)

    def work() -> dict[str, Any]:
        drop_privileges(identity)
        return {
            "groups": os.getgroups(),
            "cwd": os.getcwd(),
            "a": try_read(accounts.file_of_esaf_a),
            "b": try_read(accounts.file_of_esaf_b),
        }

    report = in_child(work)
    assert report == {
        "groups": [identity.gid],
        "cwd": str(accounts.user_home),
        "a": "denied",
        "b": "denied",
    }


def test_root_cannot_be_regained(accounts: Accounts) -> None:
    identity = resolve_identity(accounts.user, ESAF_GROUP_ONLY, accounts.settings)

    def work() -> dict[str, Any]:
        drop_privileges(identity)
        try:
            os.setuid(0)
        except PermissionError as exc:
            return {"setuid0": exc.strerror, "resuid": list(os.getresuid())}
        return {"setuid0": "succeeded"}

    report = in_child(work)
    assert report == {"setuid0": "Operation not permitted", "resuid": [identity.uid] * 3}


def test_a_missing_home_is_an_account_error(accounts: Accounts) -> None:
    base = resolve_identity(accounts.user, 0, accounts.settings)
    identity = Identity(
        uid=base.uid, gid=base.gid, home=str(accounts.base / "absent"), login=base.login, esaf=0
    )
    report = in_child(lambda: switch_to(identity))
    assert report["error"] == "AccountError"
    assert report["message"] == (
        f"cannot enter the home directory {accounts.base / 'absent'} of user {accounts.user}"
        " (esaf 0): No such file or directory"
    )


def test_root_identity_is_never_switched_to() -> None:
    identity = Identity(uid=0, gid=0, home="/", login="root", esaf=0)
    report = in_child(lambda: switch_to(identity))
    assert report == {"error": WorkerError.__name__, "message": "refusing to run requests as root"}


def test_without_root_it_warns_and_only_changes_directory(accounts: Accounts) -> None:
    """Development mode: the same call, no switch, a clear warning."""
    own = resolve_identity(accounts.user, 0, accounts.settings)
    target = resolve_identity(accounts.user, ESAF_GROUP_ONLY, accounts.settings)

    def work() -> dict[str, Any]:
        os.setgroups([own.gid])
        os.setresgid(own.gid, own.gid, own.gid)
        os.setresuid(own.uid, own.uid, own.uid)
        warnings: list[str] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("imageserver.service.identity").addHandler(handler)
        drop_privileges(target)
        return {"ids": [os.getuid(), os.getgid()], "cwd": os.getcwd(), "warnings": warnings}

    report = in_child(work)
    assert report["ids"] == [own.uid, own.gid]
    assert report["cwd"] == str(accounts.user_home)
    assert report["warnings"] == [
        f"not running as root: requests for user {accounts.user} (uid {target.uid}, gid"
        f" {target.gid}) run as uid {own.uid}, gid {own.gid} without isolation; use this only"
        " for development"
    ]
