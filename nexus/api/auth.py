"""Credentials: bcrypt passwords, HS256 access tokens, opaque refresh tokens and API keys.

bcrypt runs in a bounded thread pool, never on the event loop: one cost-12 check takes a
quarter of a second of CPU, which would stall every other request. Refresh tokens and API keys
are random strings whose SHA-256 is what the store keeps; they carry 256 random bits, so a
plain (unsalted, fast) hash is enough to make a database leak useless to an attacker.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import bcrypt
import jwt
import structlog

__all__ = [
    "API_KEY_PREFIX",
    "DEFAULT_BCRYPT_COST",
    "MIN_SECRET_BYTES",
    "REFRESH_TOKEN_PREFIX",
    "InvalidToken",
    "TokenService",
    "dummy_verify",
    "get_bcrypt_cost",
    "hash_password",
    "hash_secret",
    "looks_like_api_key",
    "new_api_key",
    "new_family_id",
    "new_refresh_token",
    "set_bcrypt_cost",
    "shutdown_executor",
    "validate_password",
    "verify_password",
]

log = structlog.get_logger("nexus.api.auth")

DEFAULT_BCRYPT_COST = 12
MIN_PASSWORD_CHARS = 8
# bcrypt ignores (pyca bcrypt >= 5: rejects) everything after the 72nd byte.
MAX_PASSWORD_BYTES = 72
MIN_SECRET_BYTES = 32
API_KEY_PREFIX = "nxk_"
REFRESH_TOKEN_PREFIX = "rt_"
_ACCESS_TYPE = "access"
# A JWT we issue is ~300 bytes; refusing huge ones early bounds the work an attacker can cause.
_MAX_TOKEN_CHARS = 4096

# A cost-12 hash of a random password nobody knows, for dummy_verify. Precomputed so that the
# first unknown-user login costs the same as any other.
_DUMMY_HASH_12 = b"$2b$12$MZTmu1BO97qsz800/q.CwOSp73/8J.3mhTIzfMEvNMNjBboeqGkma"

_cost = DEFAULT_BCRYPT_COST
_dummy_hashes: dict[int, bytes] = {DEFAULT_BCRYPT_COST: _DUMMY_HASH_12}
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


class InvalidToken(Exception):
    """An access token failed verification. The message says why, for logs; never echo it."""


# -- passwords ----------------------------------------------------------------------------


def set_bcrypt_cost(cost: int) -> None:
    """Change the cost of new hashes (tests use 4). Production keeps the default, 12."""
    global _cost
    if not 4 <= cost <= 31:
        raise ValueError("bcrypt cost must be between 4 and 31")
    _cost = cost


def get_bcrypt_cost() -> int:
    return _cost


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            # Bounded by the CPUs: more threads than cores only make every check slower.
            _executor = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 2, thread_name_prefix="nexus-bcrypt"
            )
        return _executor


def shutdown_executor() -> None:
    """Stop the bcrypt threads (at process shutdown); a later call starts a new pool."""
    global _executor
    with _executor_lock:
        pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def validate_password(pw: object) -> str | None:
    """None if ``pw`` is an acceptable new password, else the message for a 400."""
    if not isinstance(pw, str):
        return "password must be a string"
    if len(pw) < MIN_PASSWORD_CHARS:
        return f"password must be at least {MIN_PASSWORD_CHARS} characters"
    try:
        size = len(pw.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800" in JSON) has no UTF-8 form.
        return "password must be valid Unicode"
    if size > MAX_PASSWORD_BYTES:
        return f"password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8"
    return None


async def _in_pool[*Ts, R](fn: Callable[[*Ts], R], *args: *Ts) -> R:
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


def _hash_sync(pw: bytes, cost: int) -> bytes:
    return bcrypt.hashpw(pw, bcrypt.gensalt(cost))


def _check_sync(pw: bytes, hashed: bytes) -> bool:
    return bool(bcrypt.checkpw(pw, hashed))


async def hash_password(pw: str) -> str:
    """bcrypt hash of ``pw`` at the configured cost; ValueError if validate_password rejects it."""
    problem = validate_password(pw)
    if problem is not None:
        raise ValueError(problem)
    hashed = await _in_pool(_hash_sync, pw.encode("utf-8"), _cost)
    return hashed.decode("ascii")


async def verify_password(pw: str, hashed: str) -> bool:
    """True if ``pw`` matches ``hashed``. Never raises for bad input.

    A password bcrypt cannot take (over 72 bytes, not encodable) or a malformed stored hash
    still costs one dummy check, so that the answer's timing does not reveal which case it was.
    """
    try:
        pw_bytes = pw.encode("utf-8")
        hash_bytes = hashed.encode("ascii")
        if len(pw_bytes) > MAX_PASSWORD_BYTES:
            raise ValueError("password too long for bcrypt")
        return await _in_pool(_check_sync, pw_bytes, hash_bytes)
    except (ValueError, TypeError, AttributeError) as exc:
        # UnicodeError is a ValueError; bcrypt raises ValueError for a malformed hash.
        log.debug("auth.password_input_refused", error=type(exc).__name__)
        await dummy_verify()
        return False


async def dummy_verify() -> None:
    """One bcrypt check at the configured cost against a fixed hash (for unknown users)."""
    cost = _cost
    dummy = _dummy_hashes.get(cost)
    if dummy is None:
        # Other costs (tests) get a dummy of their own, so the timing still matches real users.
        dummy = await _in_pool(_hash_sync, secrets.token_bytes(16), cost)
        _dummy_hashes[cost] = dummy
    await _in_pool(_check_sync, b"not the password", dummy)


# -- opaque secrets -----------------------------------------------------------------------


def hash_secret(raw: str) -> str:
    """SHA-256 hex of a refresh token or API key: the only form the store sees."""
    # surrogatepass: a header decoded with surrogateescape must hash (to a miss), not raise.
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def new_refresh_token() -> tuple[str, str]:
    """``(raw, hash)``: raw is ``rt_`` + 256 random bits, base64url."""
    raw = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return raw, hash_secret(raw)


def new_api_key() -> tuple[str, str]:
    """``(raw, hash)``: raw is ``nxk_`` + 256 random bits, base64url. Show raw once."""
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, hash_secret(raw)


def new_family_id() -> str:
    """Identifier shared by the refresh tokens descended from one login."""
    return "rtf_" + secrets.token_hex(16)


def looks_like_api_key(s: str) -> bool:
    """Whether a credential is an API key (``Bearer nxk_...`` from older clients included)."""
    return s.startswith(API_KEY_PREFIX)


# -- access tokens ------------------------------------------------------------------------


class TokenService:
    """Issues and verifies HS256 access tokens; mints refresh tokens.

    Only HS256 with this service's secret is accepted: the algorithm list is fixed, so
    ``alg: none``, HS384/HS512 and public-key algorithms (the RS256/HS256 confusion) fail, and
    no header (``kid``, ``jku``, ``x5u``) is ever used to pick or fetch a key. ``typ`` must be
    ``access`` so nothing else signed with the secret passes as an access token.
    """

    def __init__(
        self,
        secret: bytes | str,
        *,
        access_ttl: int = 900,
        refresh_ttl: int = 30 * 86400,
        issuer: str = "nexus",
        leeway: int = 0,
    ) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        if access_ttl <= 0 or refresh_ttl <= 0:
            raise ValueError("token lifetimes must be positive")
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self._key = key
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.issuer = issuer
        self._leeway = leeway

    def __repr__(self) -> str:
        # Never the key.
        return f"TokenService(issuer={self.issuer!r}, access_ttl={self.access_ttl})"

    def issue_access(self, user_id: str) -> str:
        now = int(time.time())
        claims = {
            "sub": user_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.access_ttl,
            "iss": self.issuer,
            "typ": _ACCESS_TYPE,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify_access(self, token: str) -> str:
        """The user id (``sub``) of a valid access token; :class:`InvalidToken` otherwise."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=self.issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp", "iat", "sub", "typ", "iss"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_iss": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        except (ValueError, TypeError) as exc:  # defensive: pyjwt wraps what it knows
            raise InvalidToken(f"undecodable token: {type(exc).__name__}") from None
        if claims.get("typ") != _ACCESS_TYPE:
            raise InvalidToken("not an access token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("token has no subject")
        return sub

    def new_refresh_token(self) -> tuple[str, str]:
        """``(raw, hash)`` of a fresh refresh token; see :func:`new_refresh_token`."""
        return new_refresh_token()

    def refresh_expiry(self, now: datetime | None = None) -> datetime:
        """When a refresh token minted at ``now`` (default: now) expires."""
        return (now or datetime.now(UTC)) + timedelta(seconds=self.refresh_ttl)
