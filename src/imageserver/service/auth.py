"""Signed sessions: the web tier's ``isAuth`` in Redis, checked on every request.

The session Redis holds, at key = the session token (``pid``), a hash with ``isAuth`` (a
JSON text: ``pid``, ``uid`` = Unix login, ``allowedESAFs``, optional ``exp`` in Unix seconds)
and ``isAuthSig`` (single-line base64 signature of the exact ``isAuth`` bytes; RSA PKCS#1
v1.5 with SHA-256 as the legacy server, or Ed25519). Unlike the legacy server, every request
is checked (one HMGET), so deleting the key, an expiry or a revoked ESAF takes effect at
once (bugs S3, S5); only the costly signature verification is memoised. Refusals never
quote the token (S4), and a wrong-type key or a lost Redis is an answer, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from imageserver import metrics
from imageserver.config import Settings
from imageserver.errors import (
    ConfigError,
    EsafNotAllowedError,
    RequestError,
    SessionError,
    SessionStoreUnavailableError,
)
from imageserver.redis_connect import RedisTarget, connect_redis
from imageserver.service.requests import token_hash

log = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KeyKind = Literal["ed25519", "rsa"]
MIN_RSA_BITS = 2048
RSA_BITS = 3072
ISAUTH_FIELD = b"isAuth"
SIGNATURE_FIELD = b"isAuthSig"


@dataclass(frozen=True)
class IsAuthClaims:
    """What a signed ``isAuth`` text says."""

    pid: str = field(repr=False)
    login: str
    allowed_esafs: frozenset[int]
    expires_at: float | None = None


@dataclass(frozen=True)
class Session:
    """A checked session: who the token's holder is and which ESAFs they may use."""

    pid: str = field(repr=False)
    login: str
    allowed_esafs: frozenset[int]
    expires_at: float | None
    token_hash: str


class SessionVerifier:
    """Checks a (token, ESAF) pair against the session Redis; safe to share between threads.

    ``redis_client`` should be made by `connect_session_store` (bytes replies, short
    timeouts, one quick retry): a value decoded by the client would not be the exact bytes
    that were signed.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        public_key: PublicKey,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(public_key, PublicKey):
            raise ConfigError(f"unsupported session public key type {type(public_key).__name__}")
        self._redis = redis_client
        self._public_key = public_key
        self._clock = clock
        self._max_verified = settings.session.verified_signatures
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self._store = StoreHealth()

    def authenticate(self, pid: str, esaf: int) -> Session:
        """The session, or AccessDeniedError / SessionStoreUnavailableError saying why not."""
        session_hash = token_hash(pid)
        isauth, signature = self._fetch(pid, session_hash)
        self._verify(isauth, signature, session_hash)
        try:
            claims = parse_isauth(isauth)
        except RequestError as exc:
            raise _refused(session_hash, f"its isAuth is invalid: {exc}", "bad_isauth") from None
        if claims.pid != pid:
            raise _refused(
                session_hash, "its signed isAuth belongs to another session", "wrong_session"
            )
        if claims.expires_at is not None and claims.expires_at <= self._clock():
            raise SessionError(f"session {session_hash} has expired", reason="expired")
        if esaf != 0 and esaf not in claims.allowed_esafs:
            raise EsafNotAllowedError(
                f"session {session_hash} is not authorized for esaf {esaf}", login=claims.login
            )
        log.debug("session %s: user %s, esaf %d", session_hash, claims.login, esaf)
        return Session(
            pid=pid,
            login=claims.login,
            allowed_esafs=claims.allowed_esafs,
            expires_at=claims.expires_at,
            token_hash=session_hash,
        )

    def _fetch(self, pid: str, session_hash: str) -> tuple[bytes, bytes]:
        try:
            isauth, signature = self._redis.hmget(pid, [ISAUTH_FIELD, SIGNATURE_FIELD])
        except redis.exceptions.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                self._store.up()
                raise SessionError(
                    f"session {session_hash} is not active (its key is not a session hash)",
                    reason="unknown_session",
                ) from None
            self._store.down(f"it refused HMGET: {exc}")
            raise SessionStoreUnavailableError("session store unavailable") from exc
        except redis.exceptions.RedisError as exc:
            self._store.down(str(exc))
            raise SessionStoreUnavailableError("session store unavailable") from exc
        self._store.up()
        if isauth is None and signature is None:
            raise SessionError(f"session {session_hash} is not active", reason="unknown_session")
        if not isinstance(isauth, bytes | str):
            raise _refused(session_hash, "its isAuth field is missing", "bad_isauth")
        if not isinstance(signature, bytes | str):
            raise _refused(session_hash, "its isAuthSig field is missing", "bad_signature")
        return _as_bytes(isauth), _as_bytes(signature)

    def _verify(self, isauth: bytes, signature_b64: bytes, session_hash: str) -> None:
        memo_key = hashlib.sha256(len(isauth).to_bytes(8, "big") + isauth + signature_b64).digest()
        with self._lock:
            if memo_key in self._verified:
                self._verified.move_to_end(memo_key)
                return
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise _refused(
                session_hash, "its isAuthSig is not single-line base64", "bad_signature"
            ) from None
        try:
            if isinstance(self._public_key, rsa.RSAPublicKey):
                self._public_key.verify(signature, isauth, padding.PKCS1v15(), hashes.SHA256())
            else:
                self._public_key.verify(signature, isauth)
        except InvalidSignature:
            raise _refused(session_hash, "bad signature", "bad_signature") from None
        with self._lock:
            self._verified[memo_key] = None
            while len(self._verified) > self._max_verified:
                self._verified.popitem(last=False)


def parse_isauth(isauth: bytes) -> IsAuthClaims:
    """The claims of an ``isAuth`` text; RequestError naming the first thing wrong with it."""
    try:
        value = json.loads(isauth.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RequestError("not a JSON object")
    pid = value.get("pid")
    if not isinstance(pid, str) or not pid:
        raise RequestError("'pid' must be a non-empty string")
    login = value.get("uid")
    if not isinstance(login, str) or not login or "\x00" in login:
        raise RequestError("'uid' must be a non-empty string (the Unix login name)")
    esafs = value.get("allowedESAFs")
    if not isinstance(esafs, list) or not all(_is_integer(item) for item in esafs):
        raise RequestError("'allowedESAFs' must be an array of integers")
    expires_at = value.get("exp")
    if expires_at is not None and not (_is_number(expires_at) and math.isfinite(expires_at)):
        raise RequestError("'exp' must be a number (Unix seconds)")
    return IsAuthClaims(
        pid=pid,
        login=login,
        allowed_esafs=frozenset(esafs),
        expires_at=None if expires_at is None else float(expires_at),
    )


# -- helpers for the command line: keys, signing, writing sessions -----------------------------


def connect_session_store(settings: Settings) -> redis.Redis:
    """A client for the session Redis that fails fast when it is gone and recovers by itself
    (with Sentinel, it follows the primary through a failover)."""
    return connect_redis(
        RedisTarget.of(settings.session),
        timeout_s=settings.session.redis_timeout_s,
        retries=1,
        decode_responses=False,
    )


def load_public_key(path: Path) -> PublicKey:
    """The PEM SubjectPublicKeyInfo key that checks session signatures (RSA ≥ 2048 or Ed25519)."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM public key (SubjectPublicKeyInfo): {exc}") from None
    if not isinstance(key, PublicKey):
        raise _unsupported_key(key, path)
    _check_rsa_size(key, path)
    return key


def load_private_key(path: Path) -> PrivateKey:
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, PrivateKey):
        raise _unsupported_key(key, path)
    _check_rsa_size(key, path)
    return key


def generate_keypair(
    private_key_path: Path, public_key_path: Path, *, kind: KeyKind = "ed25519"
) -> None:
    """Write a new signing key (mode 0600) and its public key (0644); never overwrites."""
    for path in (private_key_path, public_key_path):
        if os.path.lexists(path):
            raise ConfigError(f"{path} already exists; refusing to overwrite a key")
    private_key: PrivateKey
    if kind == "ed25519":
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        raise ConfigError(f"unknown key kind {kind!r}; use 'ed25519' or 'rsa'")
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(Path(private_key_path), private_pem, 0o600)
    _write_new_file(Path(public_key_path), public_pem, 0o644)


def sign_isauth(isauth: dict[str, Any], private_key: PrivateKey) -> tuple[str, str]:
    """(isAuth text, base64 signature) for a session; refuses claims the verifier would refuse."""
    text = json.dumps(isauth, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    data = text.encode("utf-8")
    parse_isauth(data)
    if isinstance(private_key, rsa.RSAPrivateKey):
        signature = private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = private_key.sign(data)
    return text, base64.b64encode(signature).decode("ascii")


def write_session(
    redis_client: redis.Redis, pid: str, isauth_text: str, sig: str, ttl_s: int | None
) -> None:
    """Store a session as the web tier does, replacing whatever the key held, atomically."""
    pipe = redis_client.pipeline(transaction=True)
    pipe.delete(pid)
    pipe.hset(pid, mapping={ISAUTH_FIELD: isauth_text.encode("utf-8"), SIGNATURE_FIELD: sig})
    if ttl_s is not None:
        pipe.expire(pid, ttl_s)
    try:
        pipe.execute()
    except redis.exceptions.RedisError as exc:
        raise SessionStoreUnavailableError(f"session store unavailable: {exc}") from exc


def _refused(session_hash: str, what: str, reason: str) -> SessionError:
    return SessionError(f"session {session_hash} is not authorized: {what}", reason=reason)


class StoreHealth:
    """Logs the session store's changes of state, not every request that meets one."""

    def __init__(self) -> None:
        self._is_down = False
        self._lock = threading.Lock()
        self.refused_while_down = 0

    def down(self, why: str) -> None:
        metrics.redis_error("session")
        with self._lock:
            was_down, self._is_down = self._is_down, True
            self.refused_while_down += 1
        if not was_down:
            log.error("session store unavailable: %s; refusing requests until it answers", why)

    def up(self) -> None:
        if not self._is_down:
            return
        with self._lock:
            was_down, self._is_down = self._is_down, False
            refused, self.refused_while_down = self.refused_while_down, 0
        if was_down:
            log.warning("session store answers again (%d requests refused meanwhile)", refused)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _read_key_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from exc


def _check_rsa_size(key: PublicKey | PrivateKey, path: Path) -> None:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{path}: RSA key of {key.key_size} bits; at least 2048 needed")


def _unsupported_key(key: object, path: Path) -> ConfigError:
    return ConfigError(f"{path}: a {type(key).__name__}; only RSA and Ed25519 keys are supported")


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; 0600 must be exact
