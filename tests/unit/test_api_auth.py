"""Passwords, access tokens, refresh tokens and API keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest

from nexus.api import auth
from nexus.api.auth import (
    DEFAULT_BCRYPT_COST,
    InvalidToken,
    TokenService,
    dummy_verify,
    get_bcrypt_cost,
    hash_password,
    hash_secret,
    looks_like_api_key,
    new_api_key,
    new_family_id,
    new_refresh_token,
    set_bcrypt_cost,
    validate_password,
    verify_password,
)
from nexus.api.store import SqliteStore

SECRET = b"s" * 16 + b"0123456789abcdef"  # exactly 32 bytes
OTHER_SECRET = b"o" * 32


@pytest.fixture(autouse=True)
def cheap_bcrypt() -> Iterator[None]:
    """Cost 4 keeps the suite fast; test_default_cost_is_12 proves production's default."""
    set_bcrypt_cost(4)
    yield
    set_bcrypt_cost(DEFAULT_BCRYPT_COST)


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(SECRET)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "usr_0123456789abcdef",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "iss": "nexus",
        "typ": "access",
        "jti": "j1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = SECRET) -> str:
    """A compact JWS with any header, HMAC-SHA256-signed with ``key`` (None: no signature)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    if key is None:
        return signing_input + "."
    sig = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


def rejects(tokens: TokenService, token: str) -> bool:
    with pytest.raises(InvalidToken):
        tokens.verify_access(token)
    return True


# -- passwords ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pw", "ok"),
    [
        ("a" * 7, False),
        ("a" * 8, True),
        ("a" * 72, True),
        ("a" * 73, False),
        ("\u00e9" * 36, True),  # 36 characters, 72 bytes
        ("\u00e9" * 36 + "a", False),  # 37 characters, 73 bytes
        ("\U0001f512" * 18, True),  # 72 bytes in 18 characters
        ("\U0001f512" * 19, False),  # 76 bytes
        ("\U0001f512" * 7, False),  # 28 bytes but only 7 characters
        ("abc\ud800defgh", False),  # lone surrogate: no UTF-8 form
        ("pass\x00word", True),  # bcrypt (pyca) hashes NUL bytes rather than truncating
    ],
)
def test_validate_password(pw: str, ok: bool) -> None:
    message = validate_password(pw)
    assert (message is None) == ok, message
    if not ok:
        assert isinstance(message, str) and message


def test_validate_password_messages() -> None:
    assert "8 characters" in str(validate_password("short"))
    assert "72 bytes" in str(validate_password("\u00e9" * 40))
    assert validate_password(None) == "password must be a string"
    assert validate_password(12345678) == "password must be a string"


async def test_hash_and_verify_roundtrip() -> None:
    hashed = await hash_password("correct horse")
    assert hashed.startswith("$2b$04$")
    assert await verify_password("correct horse", hashed)
    assert not await verify_password("correct horsf", hashed)
    assert not await verify_password("", hashed)
    nul = await hash_password("pass\x00word")
    assert await verify_password("pass\x00word", nul)
    assert not await verify_password("pass", nul)


async def test_hash_password_refuses_what_validation_refuses() -> None:
    for bad in ("short", "a" * 73, "abc\ud800defgh"):
        with pytest.raises(ValueError):
            await hash_password(bad)


@pytest.mark.parametrize(
    ("pw", "hashed"),
    [
        ("a" * 73, None),  # pyca bcrypt >= 5 raises on > 72 bytes
        ("\u00e9" * 100, None),
        ("abc\ud800defgh", None),
        ("password1", "not a bcrypt hash"),
        ("password1", ""),
        ("password1", "$2b$04$short"),
        ("password1", "$2b$04$\u00e9\u00e9\u00e9"),  # not ASCII
        ("password1", "$2b$99$" + "a" * 53),
    ],
)
async def test_verify_password_never_raises(pw: str, hashed: str | None) -> None:
    stored = hashed if hashed is not None else await hash_password("a" * 72)
    assert await verify_password(pw, stored) is False


async def test_verify_with_bad_input_still_pays_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # Equal timing: a refused input must not answer faster than a wrong password.
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counting(pw: bytes, hashed: bytes) -> bool:
        checks.append(hashed)
        return real(pw, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    assert await verify_password("a" * 73, await hash_password("a" * 72)) is False
    assert len(checks) == 1
    assert await verify_password("password1", "garbage") is False
    assert len(checks) == 3  # the failed attempt on "garbage", then the dummy check


async def test_bcrypt_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, list[tuple[int, str]]] = {"hashpw": [], "checkpw": []}

    def recording(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            seen[name].append((threading.get_ident(), threading.current_thread().name))
            return fn(*args)

        return wrapper

    monkeypatch.setattr(bcrypt, "hashpw", recording("hashpw", bcrypt.hashpw))
    monkeypatch.setattr(bcrypt, "checkpw", recording("checkpw", bcrypt.checkpw))
    hashed = await hash_password("password1")
    await verify_password("password1", hashed)
    await dummy_verify()
    assert len(seen["hashpw"]) >= 1 and len(seen["checkpw"]) == 2
    for ident, name in seen["hashpw"] + seen["checkpw"]:
        assert ident != loop_thread
        assert name.startswith("nexus-bcrypt")


async def test_event_loop_keeps_running_during_a_slow_hash() -> None:
    set_bcrypt_cost(10)  # ~0.1 s of CPU
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    try:
        await hash_password("password1")
    finally:
        task.cancel()
    assert ticks >= 3


async def test_dummy_verify_runs_a_real_check(monkeypatch: pytest.MonkeyPatch) -> None:
    hashes: list[bytes] = []
    real = bcrypt.checkpw

    def spy(pw: bytes, hashed: bytes) -> bool:
        hashes.append(hashed)
        return real(pw, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    await dummy_verify()
    assert len(hashes) == 1 and hashes[0].startswith(b"$2b$04$")  # matches the configured cost
    assert auth._DUMMY_HASH_12.startswith(b"$2b$12$")


def test_bcrypt_cost_bounds() -> None:
    for bad in (3, 32):
        with pytest.raises(ValueError):
            set_bcrypt_cost(bad)


async def test_default_cost_is_12() -> None:
    set_bcrypt_cost(DEFAULT_BCRYPT_COST)
    assert DEFAULT_BCRYPT_COST == 12 == get_bcrypt_cost()
    hashed = await hash_password("production password")
    assert hashed.startswith("$2b$12$")
    assert await verify_password("production password", hashed)


# -- access tokens ------------------------------------------------------------------------


def test_secret_must_be_32_bytes() -> None:
    for weak in (b"", b"x" * 31, "x" * 31, "\u00e9" * 15):  # the last is 30 bytes
        with pytest.raises(ValueError, match="32 bytes"):
            TokenService(weak)
    TokenService(b"x" * 32)
    TokenService("\u00e9" * 16)  # 32 bytes of UTF-8


def test_token_service_rejects_bad_lifetimes() -> None:
    with pytest.raises(ValueError):
        TokenService(SECRET, access_ttl=0)
    with pytest.raises(ValueError):
        TokenService(SECRET, refresh_ttl=-1)


def test_repr_hides_the_secret(tokens: TokenService) -> None:
    assert SECRET.decode() not in repr(tokens)


def test_issue_and_verify(tokens: TokenService) -> None:
    before = int(time.time())
    token = tokens.issue_access("usr_0123456789abcdef")
    assert tokens.verify_access(token) == "usr_0123456789abcdef"
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"sub", "iat", "nbf", "exp", "iss", "typ", "jti"}
    assert payload["typ"] == "access" and payload["iss"] == "nexus"
    assert before <= payload["iat"] == payload["nbf"] <= int(time.time())
    assert payload["exp"] - payload["iat"] == 900
    again = tokens.issue_access("usr_0123456789abcdef")
    assert payload["jti"] != jwt.decode(again, options={"verify_signature": False})["jti"]


def test_valid_forgery_control(tokens: TokenService) -> None:
    # The forging helper itself produces accepted tokens, so the rejections below are real.
    assert tokens.verify_access(forge({"alg": "HS256", "typ": "JWT"}, claims())) == (
        "usr_0123456789abcdef"
    )


def test_alg_none_is_rejected(tokens: TokenService) -> None:
    for alg in ("none", "None", "NONE"):
        assert rejects(tokens, forge({"alg": alg, "typ": "JWT"}, claims(), key=None))
    assert rejects(tokens, jwt.encode(claims(), None, algorithm="none"))


def test_empty_signature_is_rejected(tokens: TokenService) -> None:
    token = tokens.issue_access("usr_0123456789abcdef")
    header, payload, _ = token.split(".")
    assert rejects(tokens, f"{header}.{payload}.")
    assert rejects(tokens, f"{header}.{payload}")


def test_another_secret_is_rejected(tokens: TokenService) -> None:
    assert rejects(tokens, TokenService(OTHER_SECRET).issue_access("usr_0123456789abcdef"))
    assert rejects(tokens, jwt.encode(claims(), OTHER_SECRET, algorithm="HS256"))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_rejected(tokens: TokenService, alg: str) -> None:
    # Even with our own secret: only HS256 is allowed.
    assert rejects(tokens, jwt.encode(claims(), SECRET, algorithm=alg))


def test_rs256_header_is_rejected(tokens: TokenService) -> None:
    # Key confusion: an RS256 header with an HMAC signature made with the (public) key bytes.
    assert rejects(tokens, forge({"alg": "RS256", "typ": "JWT"}, claims()))
    fake = forge({"alg": "RS256", "typ": "JWT"}, claims(), key=None) + b64(b"\x01" * 256)
    assert rejects(tokens, fake)
    for alg in ("ES256", "PS256", "EdDSA"):
        assert rejects(tokens, forge({"alg": alg}, claims()))


def test_key_location_headers_fetch_nothing(
    tokens: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        connections.append(args)
        raise AssertionError("verification tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    hostile = {
        "alg": "HS256",
        "typ": "JWT",
        "kid": "../../../../dev/null",
        "jku": "http://127.0.0.1:9/jwks.json",
        "x5u": "http://127.0.0.1:9/cert.pem",
        "jwk": {"kty": "oct", "k": b64(OTHER_SECRET)},
    }
    assert rejects(tokens, forge(hostile, claims(), key=OTHER_SECRET))
    # With our key the extra headers are simply ignored: they never select a key.
    assert tokens.verify_access(forge(hostile, claims())) == "usr_0123456789abcdef"
    assert connections == []


def test_edited_payload_is_rejected(tokens: TokenService) -> None:
    header, _, signature = tokens.issue_access("usr_0123456789abcdef").split(".")
    edited = b64(json.dumps(claims(sub="usr_ffffffffffffffff")).encode())
    assert rejects(tokens, f"{header}.{edited}.{signature}")
    # And an edited header (alg swap) under the original signature.
    swapped = b64(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
    _, payload, _ = tokens.issue_access("usr_0123456789abcdef").split(".")
    assert rejects(tokens, f"{swapped}.{payload}.{signature}")


def test_expired_token_is_rejected(tokens: TokenService) -> None:
    now = int(time.time())
    stale = claims(iat=now - 1000, nbf=now - 1000, exp=now - 1)
    assert rejects(tokens, forge({"alg": "HS256"}, stale))
    assert rejects(tokens, forge({"alg": "HS256"}, claims(exp=now)))  # exp is exclusive


def test_leeway_is_opt_in() -> None:
    now = int(time.time())
    token = forge({"alg": "HS256"}, claims(iat=now - 100, nbf=now - 100, exp=now - 5))
    assert TokenService(SECRET, leeway=30).verify_access(token) == "usr_0123456789abcdef"
    assert rejects(TokenService(SECRET), token)


def test_not_yet_valid_token_is_rejected(tokens: TokenService) -> None:
    now = int(time.time())
    assert rejects(tokens, forge({"alg": "HS256"}, claims(nbf=now + 60)))
    assert rejects(tokens, forge({"alg": "HS256"}, claims(iat=now + 60, nbf=None)))


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "typ", "iss"])
def test_missing_required_claim_is_rejected(tokens: TokenService, missing: str) -> None:
    payload = claims()
    del payload[missing]
    assert rejects(tokens, forge({"alg": "HS256"}, payload))


@pytest.mark.parametrize(
    "overrides",
    [
        {"typ": "refresh"},
        {"typ": "ACCESS"},
        {"iss": "someone-else"},
        {"sub": 42},
        {"sub": ""},
        {"exp": "tomorrow"},
        {"exp": 1e400},
        {"iat": "now"},
    ],
)
def test_wrong_claim_values_are_rejected(tokens: TokenService, overrides: dict[str, Any]) -> None:
    assert rejects(tokens, forge({"alg": "HS256"}, claims(**overrides)))


def test_other_issuer_service_tokens_are_rejected() -> None:
    other = TokenService(SECRET, issuer="staging")
    assert rejects(TokenService(SECRET), other.issue_access("usr_0123456789abcdef"))


@pytest.mark.parametrize(
    "garbage",
    ["", "garbage", "a.b.c", "...", "\u00e9.\u00e9.\u00e9", "x" * 5000, "Bearer x.y.z", "\ud800"],
)
def test_garbage_is_rejected(tokens: TokenService, garbage: str) -> None:
    assert rejects(tokens, garbage)


def test_refresh_token_and_api_key_are_not_access_tokens(tokens: TokenService) -> None:
    raw_refresh, _ = tokens.new_refresh_token()
    raw_key, _ = new_api_key()
    assert rejects(tokens, raw_refresh)
    assert rejects(tokens, raw_key)


async def test_access_token_is_not_a_refresh_token(tokens: TokenService, tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "auth.db")
    try:
        user = await store.create_user("a@example.com", "A", "h")
        raw, token_hash = tokens.new_refresh_token()
        await store.store_refresh_token(
            token_hash, user.id, new_family_id(), tokens.refresh_expiry()
        )
        access = tokens.issue_access(user.id)
        # /auth/refresh looks the hash up: an access token hashes to nothing stored.
        assert await store.get_refresh_token(hash_secret(access)) is None
        assert await store.get_refresh_token(hash_secret(raw)) is not None
    finally:
        await store.close()


# -- opaque secrets -----------------------------------------------------------------------


def test_refresh_tokens_and_api_keys_are_random_and_hashed() -> None:
    for make, prefix in ((new_refresh_token, "rt_"), (new_api_key, "nxk_")):
        seen = set()
        for _ in range(200):
            raw, digest = make()
            assert raw.startswith(prefix)
            # 32 random bytes = 256 bits, base64url without padding: 43 characters.
            assert re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9_-]{43}", raw)
            assert digest == hashlib.sha256(raw.encode()).hexdigest() == hash_secret(raw)
            seen.add(raw)
        assert len(seen) == 200


def test_token_service_refresh_helpers(tokens: TokenService) -> None:
    raw, digest = tokens.new_refresh_token()
    assert raw.startswith("rt_") and digest == hash_secret(raw)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert tokens.refresh_expiry(start) == start + timedelta(days=30)
    assert TokenService(SECRET, refresh_ttl=60).refresh_expiry(start) == start + timedelta(
        seconds=60
    )


def test_family_ids_are_distinct() -> None:
    assert len({new_family_id() for _ in range(100)}) == 100


def test_looks_like_api_key() -> None:
    assert looks_like_api_key(new_api_key()[0])
    assert not looks_like_api_key(new_refresh_token()[0])
    assert not looks_like_api_key("eyJhbGciOiJIUzI1NiJ9.e30.sig")
    assert not looks_like_api_key("")
    assert not looks_like_api_key("NXK_upper")


def test_hash_secret_never_raises_on_odd_text() -> None:
    # Headers decoded with surrogateescape carry lone surrogates: hash them to a miss.
    assert re.fullmatch(r"[0-9a-f]{64}", hash_secret("nxk_\udcff\ud800"))
    assert hash_secret("") == hashlib.sha256(b"").hexdigest()
