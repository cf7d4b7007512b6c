"""Admission: parse a request, check its session, find the Unix identity it runs as.

Runs in the manager's session-check threads. It never raises for a bad request: the outcome
is an `Admission` holding either the identity or the error, plus what the audit log needs
(type, login, ESAF, the token's short hash, file) and the request type's deadline. A
`whoami` is answered here, from the checked session: a worker never holds the session's list
of ESAFs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

from imageserver.config import Settings
from imageserver.errors import AccessDeniedError, ImageServerError
from imageserver.service.auth import SessionVerifier
from imageserver.service.identity import Identity, resolve_identity
from imageserver.service.reply import Reply, Success
from imageserver.service.requests import WhoamiRequest, echo_job, parse_request

LONG_REQUEST_TYPES = frozenset({"index"})
"""Request types that run long by nature and get ``long_request_deadline_s``."""


@dataclass(frozen=True)
class RequestInfo:
    """What the audit log says of a request; never the token itself."""

    type: str = ""
    login: str = ""
    esaf: int | None = None
    session: str = ""
    fn: str = ""
    tag: str = ""


@dataclass(frozen=True)
class Admission:
    identity: Identity | None
    failure: ImageServerError | None
    info: RequestInfo
    deadline_s: float | None = None
    answer: Reply | None = None
    """The reply itself, for requests the manager answers without a worker."""

    @classmethod
    def refused(cls, failure: ImageServerError, info: RequestInfo | None = None) -> Admission:
        return cls(identity=None, failure=failure, info=info or RequestInfo())


def make_admit(settings: Settings, verifier: SessionVerifier) -> Callable[[bytes], Admission]:
    def admit(payload: bytes) -> Admission:
        try:
            request = parse_request(payload, settings.limits)
        except ImageServerError as exc:
            return Admission.refused(exc)
        kind = str(request.job.get("type", "")).lower()
        info = RequestInfo(
            type=kind,
            esaf=request.esaf,
            session=request.session_hash,
            fn=str(getattr(request, "fn", "") or getattr(request, "dir", "")),
            tag=request.tag or "",
        )
        login = ""
        try:
            session = verifier.authenticate(request.pid, request.esaf)
            login = session.login
            if isinstance(request, WhoamiRequest):
                who = {"login": session.login, "esafs": sorted(session.allowed_esafs)}
                answer = Success((echo_job(request), json.dumps(who).encode()))
                return Admission(None, None, _with_login(info, login), answer=answer)
            identity = resolve_identity(session.login, request.esaf, settings)
        except ImageServerError as exc:
            if isinstance(exc, AccessDeniedError) and exc.login:
                login = exc.login
            return Admission.refused(exc, _with_login(info, login))
        deadline_s = (
            settings.workers.long_request_deadline_s
            if kind in LONG_REQUEST_TYPES
            else settings.workers.request_deadline_s
        )
        return Admission(identity, None, _with_login(info, login), deadline_s)

    return admit


def _with_login(info: RequestInfo, login: str) -> RequestInfo:
    return dataclasses.replace(info, login=login)
