"""Signed sessions against a real redis-server: every refusal, its text, and recovery."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from imageserver.config import ConfigError, SessionSettings, Settings
from imageserver.errors import AccessDeniedError, RequestError
from imageserver.service.auth import (
    PrivateKey,
    PublicKey,
    Session,
    SessionStoreUnavailableError,
    SessionVerifier,
    connect_session_store,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_isauth,
    write_session,
)
from imageserver.service.requests import token_hash

RedisServerFixture = Any  # tests/service/conftest.py's RedisServer: url, stop(), start()
PID = "5f4dcc3b5aa765d61d8327deb882cf99"
HASH = token_hash(PID)
CLAIMS: dict[str, Any] = {"pid": PID, "uid": "alice", "allowedESAFs": [41234, 38000]}


@pytest.fixture(scope="module", params=["ed25519", "rsa"])
def keys(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PrivateKey, PublicKey]:
    directory = tmp_path_factory.mktemp("keys")
    generate_keypair(directory / "key.pem", directory / "key.pub.pem", kind=request.param)
    return load_private_key(directory / "key.pem"), load_public_key(directory / "key.pub.pem")


@pytest.fixture
def store(redis_server: RedisServerFixture) -> Iterator[redis.Redis]:
    settings = Settings(session=SessionSettings(redis_url=redis_server.url, redis_timeout_s=1.0))
    client = connect_session_store(settings)
    yield client
    client.close()


@pytest.fixture
def verifier(store: redis.Redis, keys: tuple[PrivateKey, PublicKey]) -> SessionVerifier:
    return SessionVerifier(store, keys[1], Settings())


def save(
    store: redis.Redis, private_key: PrivateKey, claims: dict[str, Any], pid: str = PID
) -> None:
    text, sig = sign_isauth(claims, private_key)
    write_session(store, pid, text, sig, ttl_s=3600)


def sign_raw(data: bytes, private_key: PrivateKey) -> str:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return base64.b64encode(
            private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        ).decode()
    return base64.b64encode(private_key.sign(data)).decode()


def refusal(verifier: SessionVerifier, esaf: int = 0, pid: str = PID) -> str:
    with pytest.raises(AccessDeniedError) as caught:
        verifier.authenticate(pid, esaf)
    message = str(caught.value)
    assert pid not in message
    return message


# -- accepted sessions --------------------------------------------------------------------------


def test_a_signed_session_is_accepted(
    store: redis.Redis, keys: Any, verifier: SessionVerifier
) -> None:
    save(store, keys[0], CLAIMS)
    session = verifier.authenticate(PID, 41234)
    assert session == Session(
        pid=PID,
        login="alice",
        allowed_esafs=frozenset({41234, 38000}),
        expires_at=None,
        token_hash=HASH,
    )
    assert PID not in repr(session)


def test_esaf_zero_is_always_allowed(
    store: redis.Redis, keys: Any, verifier: SessionVerifier
) -> None:
    save(store, keys[0], {**CLAIMS, "allowedESAFs": []})
    assert verifier.authenticate(PID, 0).allowed_esafs == frozenset()


def test_a_session_with_a_future_expiry_is_accepted(
    store: redis.Redis, keys: Any, verifier: SessionVerifier
) -> None:
    expires_at = int(time.time()) + 600
    save(store, keys[0], {**CLAIMS, "exp": expires_at})
    assert verifier.authenticate(PID, 38000).expires_at == expires_at


def test_a_signature_made_by_openssl_is_accepted(
    tmp_path: Path, store: redis.Redis, redis_server: RedisServerFixture
) -> None:
    """The legacy web tier signs with OpenSSL (RSA PKCS#1 v1.5, SHA-256, one-line base64)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    key_path, pub_path, data_path = tmp_path / "k.pem", tmp_path / "k.pub", tmp_path / "isauth"
    subprocess.run(["openssl", "genrsa", "-out", key_path, "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", key_path, "-pubout", "-out", pub_path],
        check=True,
        capture_output=True,
    )
    isauth = json.dumps({"uid": "bob", "pid": PID, "allowedESAFs": [50001], "role": "Staff"})
    data_path.write_text(isauth)
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key_path, data_path],
        check=True,
        capture_output=True,
    ).stdout
    store.hset(PID, mapping={"isAuth": isauth, "isAuthSig": base64.b64encode(signature)})
    session = SessionVerifier(store, load_public_key(pub_path), Settings()).authenticate(PID, 50001)
    assert (session.login, session.allowed_esafs) == ("bob", frozenset({50001}))


def test_a_client_that_decodes_replies_still_verifies(
    redis_server: RedisServerFixture, keys: Any, store: redis.Redis
) -> None:
    save(store, keys[0], {**CLAIMS, "uid": "zoë"})
    decoding = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert SessionVerifier(decoding, keys[1], Settings()).authenticate(PID, 0).login == "zoë"
    finally:
        decoding.close()


# -- refusals -------------------------------------------------------------------------------------


def test_missing_key_is_not_active(verifier: SessionVerifier) -> None:
    assert refusal(verifier) == f"session {HASH} is not active"


@pytest.mark.parametrize("command", [("set", "x"), ("rpush", "x"), ("sadd", "x")])
def test_a_key_of_another_type_is_refused_not_a_crash(
    store: redis.Redis, verifier: SessionVerifier, command: tuple[str, str]
) -> None:
    getattr(store, command[0])(PID, command[1])
    assert refusal(verifier) == f"session {HASH} is not active (its key is not a session hash)"
    store.delete(PID)
    assert refusal(verifier) == f"session {HASH} is not active"


def test_missing_fields(store: redis.Redis, keys: Any, verifier: SessionVerifier) -> None:
    store.hset(PID, "isAuth", json.dumps(CLAIMS))
    assert refusal(verifier) == f"session {HASH} is not authorized: its isAuthSig field is missing"
    store.delete(PID)
    store.hset(PID, "isAuthSig", sign_raw(b"{}", keys[0]))
    assert refusal(verifier) == f"session {HASH} is not authorized: its isAuth field is missing"
    store.delete(PID)
    store.hset(PID, "other", "x")
    assert refusal(verifier) == f"session {HASH} is not active"


@pytest.mark.parametrize("mangle", ["newline", "space", "junk", "padding"])
def test_signature_that_is_not_single_line_base64(
    store: redis.Redis, keys: Any, verifier: SessionVerifier, mangle: str
) -> None:
    isauth = json.dumps(CLAIMS)
    sig = sign_raw(isauth.encode(), keys[0])
    bad = {
        "newline": sig[:20] + "\n" + sig[20:],
        "space": sig + " ",
        "junk": "%%" + sig,
        "padding": sig.rstrip("=") + "A",
    }[mangle]
    store.hset(PID, mapping={"isAuth": isauth, "isAuthSig": bad})
    assert (
        refusal(verifier)
        == f"session {HASH} is not authorized: its isAuthSig is not single-line base64"
    )


def test_bad_signatures(
    store: redis.Redis, keys: Any, verifier: SessionVerifier, tmp_path: Path
) -> None:
    isauth = json.dumps(CLAIMS)
    sig = sign_raw(isauth.encode(), keys[0])
    expected = f"session {HASH} is not authorized: bad signature"
    store.hset(PID, mapping={"isAuth": isauth.replace("41234", "41235"), "isAuthSig": sig})
    assert refusal(verifier, 41235) == expected
    store.hset(PID, mapping={"isAuth": isauth + "\n", "isAuthSig": sig})  # exact bytes count
    assert refusal(verifier) == expected
    short = base64.b64encode(base64.b64decode(sig)[:-4]).decode()
    store.hset(PID, mapping={"isAuth": isauth, "isAuthSig": short})
    assert refusal(verifier) == expected
    store.hset(PID, mapping={"isAuth": isauth, "isAuthSig": ""})
    assert refusal(verifier) == expected
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub", kind="ed25519")
    forged = sign_raw(isauth.encode(), load_private_key(tmp_path / "other.pem"))
    store.hset(PID, mapping={"isAuth": isauth, "isAuthSig": forged})
    assert refusal(verifier) == expected


def test_a_verified_signature_is_not_reused_for_other_content(
    store: redis.Redis, keys: Any, verifier: SessionVerifier
) -> None:
    isauth = json.dumps(CLAIMS)
    sig = sign_raw(isauth.encode(), keys[0])
    store.hset(PID, mapping={"isAuth": isauth, "isAuthSig": sig})
    assert verifier.authenticate(PID, 41234).login == "alice"
    store.hset(PID, mapping={"isAuth": isauth.replace("alice", "mallory"), "isAuthSig": sig})
    assert refusal(verifier) == f"session {HASH} is not authorized: bad signature"


@pytest.mark.parametrize(
    ("isauth", "reason"),
    [
        (b"not json", "not JSON (Expecting value: line 1 column 1 (char 0))"),
        (
            b"\xff\xfe",
            "not JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)",
        ),
        (b'["pid"]', "not a JSON object"),
        (b'{"uid": "alice", "allowedESAFs": []}', "'pid' must be a non-empty string"),
        (b'{"pid": 7, "uid": "alice", "allowedESAFs": []}', "'pid' must be a non-empty string"),
        (
            b'{"pid": "P", "allowedESAFs": []}',
            "'uid' must be a non-empty string (the Unix login name)",
        ),
        (
            b'{"pid": "P", "uid": 1000, "allowedESAFs": []}',
            "'uid' must be a non-empty string (the Unix login name)",
        ),
        (b'{"pid": "P", "uid": "alice"}', "'allowedESAFs' must be an array of integers"),
        (
            b'{"pid": "P", "uid": "alice", "allowedESAFs": ["41234"]}',
            "'allowedESAFs' must be an array of integers",
        ),
        (
            b'{"pid": "P", "uid": "alice", "allowedESAFs": [true]}',
            "'allowedESAFs' must be an array of integers",
        ),
        (
            b'{"pid": "P", "uid": "alice", "allowedESAFs": [], "exp": "soon"}',
            "'exp' must be a number (Unix seconds)",
        ),
        (
            b'{"pid": "P", "uid": "alice", "allowedESAFs": [], "exp": 1e999}',
            "'exp' must be a number (Unix seconds)",
        ),
    ],
)
def test_signed_but_invalid_isauth(
    store: redis.Redis, keys: Any, verifier: SessionVerifier, isauth: bytes, reason: str
) -> None:
    isauth = isauth.replace(b'"P"', json.dumps(PID).encode())
    store.hset(PID, mapping={"isAuth": isauth, "isAuthSig": sign_raw(isauth, keys[0])})
    assert refusal(verifier) == f"session {HASH} is not authorized: its isAuth is invalid: {reason}"


def test_isauth_of_another_session(
    store: redis.Redis, keys: Any, verifier: SessionVerifier
) -> None:
    save(store, keys[0], {**CLAIMS, "pid": "another-token"})
    assert (
        refusal(verifier)
        == f"session {HASH} is not authorized: its signed isAuth belongs to another session"
    )


def test_expired_session(store: redis.Redis, keys: Any, verifier: SessionVerifier) -> None:
    save(store, keys[0], {**CLAIMS, "exp": time.time() - 1})
    assert refusal(verifier) == f"session {HASH} has expired"


def test_esaf_not_allowed(store: redis.Redis, keys: Any, verifier: SessionVerifier) -> None:
    save(store, keys[0], CLAIMS)
    assert refusal(verifier, 41235) == f"session {HASH} is not authorized for esaf 41235"


def test_changes_take_effect_on_the_next_request(
    store: redis.Redis, keys: Any, verifier: SessionVerifier
) -> None:
    """Legacy bug S3: a revoked ESAF or a logout had no effect on a running child."""
    save(store, keys[0], CLAIMS)
    assert verifier.authenticate(PID, 41234).login == "alice"
    save(store, keys[0], {**CLAIMS, "allowedESAFs": [38000]})
    assert refusal(verifier, 41234) == f"session {HASH} is not authorized for esaf 41234"
    store.delete(PID)
    assert refusal(verifier, 38000) == f"session {HASH} is not active"


def test_session_store_down_then_back(
    redis_server: RedisServerFixture, keys: Any, store: redis.Redis
) -> None:
    verifier = SessionVerifier(store, keys[1], Settings())
    save(store, keys[0], CLAIMS)
    assert verifier.authenticate(PID, 41234).login == "alice"
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(SessionStoreUnavailableError, match=r"^session store unavailable$"):
        verifier.authenticate(PID, 41234)
    assert time.monotonic() - started < 5.0
    redis_server.start()  # same port, empty: there is no persistence
    assert refusal(verifier, 41234) == f"session {HASH} is not active"
    save(store, keys[0], CLAIMS)
    assert verifier.authenticate(PID, 41234).login == "alice"


# -- helpers for the command line -----------------------------------------------------------------


def test_write_session_replaces_any_key_and_sets_the_ttl(store: redis.Redis, keys: Any) -> None:
    store.set(PID, "old")
    text, sig = sign_isauth(CLAIMS, keys[0])
    write_session(store, PID, text, sig, ttl_s=120)
    assert store.hgetall(PID) == {b"isAuth": text.encode(), b"isAuthSig": sig.encode()}
    assert 0 < store.ttl(PID) <= 120
    write_session(store, PID, text, sig, ttl_s=None)
    assert store.ttl(PID) == -1


def test_sign_isauth_is_compact_sorted_and_refuses_invalid_claims(keys: Any) -> None:
    text, sig = sign_isauth({"uid": "a", "pid": "p", "allowedESAFs": [2, 1]}, keys[0])
    assert text == '{"allowedESAFs":[2,1],"pid":"p","uid":"a"}'
    assert "\n" not in sig
    with pytest.raises(RequestError, match="'allowedESAFs' must be an array of integers"):
        sign_isauth({"uid": "a", "pid": "p", "allowedESAFs": "41234"}, keys[0])


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_generate_keypair_modes_and_no_overwrite(tmp_path: Path, kind: Any) -> None:
    private_path, public_path = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    generate_keypair(private_path, public_path, kind=kind)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    text, sig = sign_isauth(CLAIMS, load_private_key(private_path))
    assert base64.b64decode(sig, validate=True)
    assert json.loads(text) == CLAIMS
    assert (
        load_public_key(public_path).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public_path.read_bytes()
    )
    before = private_path.read_bytes()
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite a key"):
        generate_keypair(private_path, tmp_path / "new.pub", kind=kind)
    assert private_path.read_bytes() == before
    assert not (tmp_path / "new.pub").exists()


def test_unusable_public_keys_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the key file .*absent.pem: No such file"):
        load_public_key(tmp_path / "absent.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    (tmp_path / "weak.pem").write_bytes(
        weak.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="RSA key of 1024 bits; at least 2048 needed"):
        load_public_key(tmp_path / "weak.pem")
    curve = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "ec.pem").write_bytes(
        curve.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="only RSA and Ed25519 keys are supported"):
        load_public_key(tmp_path / "ec.pem")
