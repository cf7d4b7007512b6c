"""What an admin sees in the manager's log: one structured WARNING line per refusal, never a
session token; one line per change of the session store's state, not one per request; a
documented ready line from each process."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain import IS_ROOT, Chain, ground, place_file, running_chain, wait_for
from redis_process import RedisServer

from imageserver.sampledata.dataset import PILATUS_CBF
from imageserver.service.auth import generate_keypair, load_private_key, sign_isauth
from imageserver.service.requests import token_hash

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="real users and ESAF groups need root")
ESAF, OTHER_ESAF = 61501, 61502
REFUSAL = re.compile(
    r"WARNING .* refused reason=(?P<reason>\S+) code=(?P<code>\S+) login=(?P<login>\S+)"
    r" esaf=(?P<esaf>\S+) session=(?P<session>\S+) type=(?P<type>\S+) file=(?P<file>.+)$"
)


@dataclass
class Site:
    chain: Chain
    redis: RedisServer
    user: str
    cbf: Path
    secret_file: Path


@pytest.fixture(scope="module")
def site(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with ground(tmp_path_factory.mktemp("redis")) as base:
        user = f"isau{os.urandom(3).hex()}"
        base.accounts.add_user(user)
        gid = base.accounts.add_esaf_group(ESAF)
        base.accounts.add_esaf_group(OTHER_ESAF)
        data = base.data
        cbf = place_file(sample_dir / PILATUS_CBF, data / PILATUS_CBF, gid=gid)
        secret = place_file(sample_dir / PILATUS_CBF, data / "secret_0001.cbf", gid=0, mode=0o600)
        with running_chain(base.redis.url) as chain:
            yield Site(chain, base.redis, user, cbf, secret)


def view(token: str, path: Path, esaf: int = ESAF) -> dict[str, object]:
    return {"type": "jpeg", "pid": token, "esaf": esaf, "fn": str(path), "xsize": 32}


def refusals(chain: Chain) -> list[dict[str, str]]:
    lines = chain.log_text().splitlines()
    return [match.groupdict() for line in lines if (match := REFUSAL.search(line))]


def refusal_of(chain: Chain, token: str) -> dict[str, str]:
    def find() -> dict[str, str] | None:
        found = [r for r in refusals(chain) if r["session"] == token_hash(token)]
        return found[-1] if found else None

    return dict(wait_for(find, what=f"the refusal of session {token_hash(token)}"))


def write_raw_session(site: Site, token: str, isauth: str, signature: str) -> None:
    site.redis.client().hset(token, mapping={"isAuth": isauth, "isAuthSig": signature})


def test_each_kind_of_refusal_is_one_structured_line_without_the_token(
    site: Site, tmp_path: Path
) -> None:
    chain = site.chain
    tokens: dict[str, str] = {}
    tokens["unknown_session"] = os.urandom(16).hex()
    tokens["expired"] = chain.session(site.user, [ESAF], exp=int(time.time()) - 5)
    tokens["esaf_not_allowed"] = chain.session(site.user, [ESAF])
    tokens["unknown_account"] = chain.session(f"nosuch{os.urandom(3).hex()}", [ESAF])
    tokens["permission_denied"] = chain.session(site.user, [ESAF])
    tampered = chain.session(site.user, [ESAF])
    isauth = json.loads(site.redis.client().hget(tampered, "isAuth"))
    isauth["allowedESAFs"] = [ESAF, OTHER_ESAF]
    site.redis.client().hset(tampered, "isAuth", json.dumps(isauth))
    tokens["bad_signature"] = tampered
    generate_keypair(tmp_path / "forger.pem", tmp_path / "forger.pub.pem")
    forged = os.urandom(16).hex()
    text, signature = sign_isauth(
        {"pid": forged, "uid": site.user, "allowedESAFs": [ESAF]},
        load_private_key(tmp_path / "forger.pem"),
    )
    write_raw_session(site, forged, text, signature)
    tokens["forged"] = forged

    for case, token in tokens.items():
        esaf = OTHER_ESAF if case == "esaf_not_allowed" else ESAF
        path = site.secret_file if case == "permission_denied" else site.cbf
        reply = chain.request(view(token, path, esaf))
        assert reply.error is not None or reply.job.get("error"), case

    expected = {
        "unknown_session": ("unknown_session", "session_invalid", "-"),
        "expired": ("expired", "session_invalid", "-"),
        "esaf_not_allowed": ("esaf_not_allowed", "esaf_not_allowed", site.user),
        "unknown_account": ("unknown_account", "account_unusable", "nosuch"),
        "permission_denied": ("permission_denied", "permission_denied", site.user),
        "bad_signature": ("bad_signature", "session_invalid", "-"),
        "forged": ("bad_signature", "session_invalid", "-"),
    }
    for case, (reason, code, login) in expected.items():
        line = refusal_of(chain, tokens[case])
        assert (line["reason"], line["code"]) == (reason, code), (case, line)
        assert line["login"].startswith(login), (case, line)
        assert line["type"] == "jpeg"
    denied = refusal_of(chain, tokens["permission_denied"])
    assert denied["file"] == f'"{site.secret_file}"'
    assert refusal_of(chain, tokens["esaf_not_allowed"])["esaf"] == str(OTHER_ESAF)
    log = chain.log_text()
    assert not [case for case, token in tokens.items() if token in log]


def test_a_session_store_outage_is_logged_once_not_per_request(site: Site) -> None:
    chain = site.chain
    token = chain.session(site.user, [ESAF])
    before = chain.log_text()
    site.redis.stop()
    try:
        for _ in range(30):
            reply = chain.request(view(token, site.cbf), timeout_s=10)
            assert reply.error == "session store unavailable"
    finally:
        site.redis.start()
    token = chain.session(site.user, [ESAF])
    assert chain.request(view(token, site.cbf)).error is None
    during = chain.log_text()[len(before) :]
    assert during.count("session store unavailable") == 1, during
    assert re.search(r"session store answers again \(\d+ requests refused meanwhile\)", during)


def test_both_processes_log_the_documented_ready_line(site: Site) -> None:
    assert "imageserver broker ready: clients on " in site.chain.log_text("proxy")
    assert "imageserver serve ready: requests from " in site.chain.log_text("serve")
    documented = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
    text = documented.read_text()
    assert "imageserver broker ready" in text and "imageserver serve ready" in text
    assert "refused reason=" in text
