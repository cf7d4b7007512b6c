"""Unix identities: which uid, gid and home a (user, ESAF) pair runs as, and switching to it.

File access is left to ordinary Unix permissions, as in the legacy server: a worker runs with
the user's uid and either the user's primary group (no ESAF, or an ESAF number at or below
the threshold) or the ESAF's group. Unlike the legacy server it keeps *no* supplementary
group (bug S1: workers kept root's groups), verifies that the switch cannot be undone, and
refuses root outright.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

from imageserver.config import Settings
from imageserver.errors import AccountError, WorkerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who a worker runs as. Hashable; ``credentials`` is what file access depends on."""

    uid: int
    gid: int
    home: str
    login: str
    esaf: int

    @property
    def credentials(self) -> tuple[int, int]:
        return (self.uid, self.gid)


def resolve_identity(login: str, esaf: int, settings: Settings) -> Identity:
    """The identity for ``login`` working on ``esaf``; AccessDeniedError if it cannot be run.

    ESAF ≤ ``esaf_threshold`` (or 0, "no ESAF"): the user's primary group and home, as the
    legacy server did for ESAF ≤ 40000. Above it: the group named by ``esaf_group_pattern``
    (``e{esaf}``), and the home of the account of the same name if there is one, else the
    user's home.
    """
    user = _user(login)
    uid, gid, home = user.pw_uid, user.pw_gid, user.pw_dir
    if esaf > settings.identity.esaf_threshold:
        group_name = settings.identity.esaf_group_pattern.format(esaf=esaf)
        gid = _group(group_name, esaf, login).gr_gid
        esaf_account = _optional_user(group_name)
        if esaf_account is not None:
            home = esaf_account.pw_dir
    if uid == 0 or gid == 0:
        raise AccountError(
            f"refusing to run requests as root (user '{login}', esaf {esaf}: uid {uid}, gid {gid})",
            reason="root_account",
            login=login,
        )
    return Identity(uid=uid, gid=gid, home=home, login=login, esaf=esaf)


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good: one group, no way back to root, in its home directory.

    Call it before starting threads. Not running as root (development), it logs a warning and
    only changes directory: requests then run as the current user, not isolated.
    """
    if os.geteuid() != 0:
        log.warning(
            "not running as root: requests for user %s (uid %d, gid %d) run as uid %d, gid %d"
            " without isolation; use this only for development",
            identity.login,
            identity.uid,
            identity.gid,
            os.getuid(),
            os.getgid(),
        )
        _enter_home(identity)
        return
    if identity.uid == 0 or identity.gid == 0:
        raise WorkerError("refusing to run requests as root")
    try:
        os.setgroups([identity.gid])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise WorkerError(
            f"cannot switch to uid {identity.uid}, gid {identity.gid}: {exc.strerror}"
        ) from exc
    _check_dropped(identity)
    os.environ.update(HOME=identity.home, USER=identity.login, LOGNAME=identity.login)
    _enter_home(identity)


def _check_dropped(identity: Identity) -> None:
    """Trust nothing: read the ids back and make sure root cannot be regained."""
    expected_uids = (identity.uid,) * 3
    expected_gids = (identity.gid,) * 3
    actual = (os.getresuid(), os.getresgid(), os.getgroups())
    if actual != (expected_uids, expected_gids, [identity.gid]):
        raise WorkerError(f"privileges not dropped as asked: uids, gids, groups = {actual}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise WorkerError("privileges not dropped: setuid(0) succeeded afterwards")


def _enter_home(identity: Identity) -> None:
    try:
        os.chdir(identity.home)
    except OSError as exc:
        raise AccountError(
            f"cannot enter the home directory {identity.home} of user {identity.login}"
            f" (esaf {identity.esaf}): {exc.strerror}",
            reason="no_home",
            login=identity.login,
        ) from exc


def _user(login: str) -> pwd.struct_passwd:
    account = _optional_user(login)
    if account is None:
        raise AccountError(
            f"unknown user '{login}': no such Unix account", reason="unknown_account", login=login
        )
    return account


def _optional_user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


def _group(name: str, esaf: int, login: str) -> grp.struct_group:
    try:
        return grp.getgrnam(name)
    except (KeyError, ValueError):
        raise AccountError(
            f"no Unix group '{name}' for esaf {esaf}", reason="unknown_group", login=login
        ) from None
