"""The soak's requests and the judge of their replies: pure logic, no sockets.

A `Case` is the frames a client sends and what a right answer looks like. A valid request
must come back as a success of its own shape whose job echo carries its own ``tag`` (so a
reply meant for another request is caught); an invalid one must be refused with one of the
codes its kind allows. Errors the disruptions cause (a node killed, Redis restarted) are
neither right nor wrong: `judge` names them by code so the soak can count them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

DISRUPTION_CODES = frozenset({"busy", "worker_failed", "session_store_unavailable", "timeout"})
"""What a valid request may get while a node or Redis is down: please retry, not a bug."""
TYPED = b"typed"
HUGE_PAYLOAD_BYTES = (1 << 20) + 1024
"""Just above the default ``[limits] max_request_bytes`` (1 MiB)."""
UNTYPED = "untyped"
"""The code of a one-frame error (the broker's answer to frames that are no request)."""


@dataclass(frozen=True)
class Session:
    """A signed session, with the requests it may make and a file it may not read."""

    pid: str
    esaf: int
    login: str
    views: tuple[dict[str, object], ...]
    """Valid requests without pid, esaf and tag: jpeg views, meta, spots, list, latest and
    analysis of the sample data its ESAF group reads."""
    foreign_file: str
    """A file its ESAF group may not read (another ESAF's, or one of mode 000)."""
    missing_file: str
    """A file that is not there, in a directory its ESAF group reads."""


@dataclass(frozen=True)
class Target:
    """What the mix may point at: the sessions and what no session may see."""

    sessions: list[Session]
    foreign_esaf: int
    """An ESAF no session lists."""


@dataclass(frozen=True)
class Case:
    kind: str
    frames: list[bytes]
    """What the client's DEALER sends, delimiter included (or not, on purpose)."""
    tag: str
    is_valid: bool
    refusals: frozenset[str] = field(default_factory=frozenset)
    """The error codes that are a right answer to an invalid request."""
    text: str = ""
    """For a one-frame (untyped) refusal: a word its text must hold."""


@dataclass(frozen=True)
class Verdict:
    outcome: str
    """``ok`` (the right answer), ``error`` (a disruption's code) or ``wrong``."""
    code: str | None = None
    """The error code of a refusal or of an error; None for a success."""
    why: str = ""


def valid_case(tag: str, session: Session, view: dict[str, object]) -> Case:
    request = {**view, "pid": session.pid, "esaf": session.esaf, "tag": tag}
    return Case(str(view["type"]), _frames(request), tag, is_valid=True)


def invalid_case(kind: str, tag: str, session: Session, target: Target, rng: random.Random) -> Case:
    base: dict[str, object] = {"type": "jpeg", "pid": session.pid, "esaf": session.esaf}
    views = [view for view in session.views if view["type"] == "jpeg"]
    view = {k: v for k, v in rng.choice(views).items() if k != "type"}
    base.update(view, tag=tag)
    refused = frozenset({"bad_request"})
    if kind == "bad_json":
        payload = json.dumps(base).encode()[: rng.randrange(1, 40)]
        return Case(kind, [b"", payload, TYPED], tag, False, refused)
    if kind == "no_delimiter":
        return Case(
            kind, [json.dumps(base).encode()], tag, False, frozenset({UNTYPED}), "delimiter"
        )
    if kind == "unknown_type":
        return Case(
            kind, _frames({**base, "type": f"soak{rng.randrange(99)}"}), tag, False, refused
        )
    if kind == "wrong_type":
        field_name, value = rng.choice([("xsize", "big"), ("frame", 1.5), ("esaf", "x"), ("fn", 7)])
        return Case(kind, _frames({**base, field_name: value}), tag, False, refused)
    if kind == "huge_size":
        field_name, value = rng.choice([("xsize", 10**6), ("zoom", 1e6), ("quality", 1000)])
        return Case(kind, _frames({**base, field_name: value}), tag, False, refused)
    if kind == "huge_payload":
        huge = {**base, "label": "x" * HUGE_PAYLOAD_BYTES}
        return Case(kind, _frames(huge), tag, False, refused)
    if kind == "unknown_session":
        request = {**base, "pid": f"{rng.getrandbits(128):032x}"}
        return Case(kind, _frames(request), tag, False, frozenset({"session_invalid"}))
    if kind == "foreign_esaf":
        request = {**base, "esaf": target.foreign_esaf}
        return Case(kind, _frames(request), tag, False, frozenset({"esaf_not_allowed"}))
    if kind == "foreign_file":
        request = {**base, "fn": session.foreign_file, "frame": 1}
        return Case(kind, _frames(request), tag, False, frozenset({"permission_denied"}))
    if kind == "missing_file":
        request = {**base, "fn": session.missing_file, "frame": 1}
        return Case(kind, _frames(request), tag, False, frozenset({"file_missing"}))
    raise ValueError(f"unknown invalid kind {kind!r}")


INVALID_WEIGHTS = {
    "bad_json": 4,
    "no_delimiter": 2,
    "unknown_type": 3,
    "wrong_type": 4,
    "huge_size": 3,
    "huge_payload": 0.1,
    "unknown_session": 4,
    "foreign_esaf": 3,
    "foreign_file": 3,
    "missing_file": 1,
}
INVALID_SHARE = 0.25


def mixed_case(index: int, target: Target, seed: int) -> Case:
    """Request number ``index`` of the run: the same one for the same seed, whoever sends it."""
    rng = random.Random(seed * 1_000_003 + index)
    tag = f"soak-{index}"
    session = rng.choice(target.sessions)
    if rng.random() < INVALID_SHARE:
        kind = rng.choices(list(INVALID_WEIGHTS), weights=list(INVALID_WEIGHTS.values()))[0]
        return invalid_case(kind, tag, session, target, rng)
    return valid_case(tag, session, rng.choice(session.views))


def judge(case: Case, frames: list[bytes]) -> Verdict:
    """Right, a disruption's error, or wrong, and why."""
    if frames and frames[0] == b"":
        if not case.is_valid:
            return Verdict("wrong", why=f"{case.kind}: a success for an invalid request")
        problem = _success_problem(case, frames)
        return Verdict("wrong", why=f"{case.kind}: {problem}") if problem else Verdict("ok")
    code = _error_code(frames)
    if code is None:
        return Verdict("wrong", why=f"{case.kind}: malformed reply {_head(frames)}")
    if not case.is_valid and code in case.refusals:
        if code == UNTYPED and case.text.encode() not in frames[0]:
            return Verdict("wrong", code, f"{case.kind}: refused for another reason {frames[0]!r}")
        return Verdict("ok", code)
    if code in DISRUPTION_CODES:
        return Verdict("error", code)
    expected = "success" if case.is_valid else "/".join(sorted(case.refusals))
    return Verdict("wrong", code, f"{case.kind}: {code} ({frames[0][:200]!r}), not {expected}")


def _error_code(frames: list[bytes]) -> str | None:
    if len(frames) == 1:
        return UNTYPED
    if len(frames) == 2:
        try:
            return str(json.loads(frames[1])["code"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _success_problem(case: Case, frames: list[bytes]) -> str | None:
    """What is wrong with a success reply to a valid request, if anything."""
    parts = 4 if case.kind == "jpeg" else 3
    if len(frames) != parts:
        return f"{len(frames)} frames, not {parts}"
    try:
        echo, meta = json.loads(frames[1]), json.loads(frames[2])
    except ValueError:
        return f"job echo or meta is not JSON: {_head(frames)}"
    if not isinstance(echo, dict) or echo.get("tag") != case.tag:
        return f"the reply of another request (tag {echo.get('tag')!r}, sent {case.tag!r})"
    if echo.get("error"):
        return f"echo says {echo['error']!r}"
    check = SHAPES.get(case.kind)
    if check is not None and not check(meta, frames):
        return f"meta of the wrong shape: {frames[2][:200]!r}"
    return None


SHAPES: dict[str, Callable[[dict[str, object], list[bytes]], bool]] = {
    "jpeg": lambda meta, frames: frames[3][:2] == b"\xff\xd8" and frames[3][-2:] == b"\xff\xd9",
    "spots": lambda meta, _frames: isinstance(meta.get("spots"), int),
    "list": lambda meta, _frames: isinstance(meta.get("datasets"), list),
    "latest": lambda meta, _frames: "dataset" in meta and "frame" in meta,
    "analysis": lambda meta, _frames: isinstance(meta.get("n_spots_total"), int),
    "meta": lambda meta, _frames: bool(meta),
}


def _frames(request: dict[str, object]) -> list[bytes]:
    return [b"", json.dumps(request).encode(), TYPED]


def _head(frames: list[bytes]) -> str:
    return repr([frame[:80] for frame in frames[:4]])
