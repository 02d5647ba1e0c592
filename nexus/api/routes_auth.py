"""/auth/*: register, login, refresh (rotating refresh tokens with reuse detection)."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from aiohttp import web

from nexus.api import auth
from nexus.api.context import client_address, ctx, json_body, limit
from nexus.api.errors import ApiProblem, json_out
from nexus.api.models import (
    AuthBundle,
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    UserOut,
)
from nexus.api.store import EmailTaken, User, normalize_email

log = structlog.get_logger("nexus.api.auth")
routes = web.RouteTableDef()

_BAD_LOGIN = "invalid email or password"


async def _bundle(request: web.Request, user: User, family: str | None = None) -> AuthBundle:
    c = ctx(request)
    raw, digest = auth.new_refresh_token()
    await c.store.store_refresh_token(
        digest, user.id, family or auth.new_family_id(), c.tokens.refresh_expiry()
    )
    return AuthBundle(
        accessToken=c.tokens.issue_access(user.id),
        refreshToken=raw,
        user=UserOut(id=user.id, email=user.email, displayName=user.display_name),
    )


@routes.post("/auth/register")
async def register(request: web.Request) -> web.Response:
    c = ctx(request)
    await limit(c.per_address, f"register:{client_address(request)}")
    body = await json_body(request, RegisterRequest)
    problem = auth.validate_password(body.password)
    if problem:
        raise ApiProblem(400, errors=[problem])  # "password must be ..."
    await limit(c.per_account, f"register:{normalize_email(body.email)}")
    hashed = await auth.hash_password(body.password)
    try:
        user = await c.store.create_user(body.email, body.displayName, hashed)
    except EmailTaken:
        raise ApiProblem(409, "email already registered") from None
    except ValueError:
        raise ApiProblem(400, "text fields must be valid UTF-8") from None
    log.info("auth.registered", user=user.id)
    return json_out(await _bundle(request, user), status=201)


@routes.post("/auth/login")
async def login(request: web.Request) -> web.Response:
    c = ctx(request)
    await limit(c.per_address, f"login:{client_address(request)}")
    body = await json_body(request, LoginRequest)
    await limit(c.per_account, f"login:{normalize_email(body.email)}")
    try:
        user = await c.store.get_user_by_email(body.email)
    except ValueError:
        user = None
    if user is None:
        await auth.dummy_verify()  # same cost as a real check: no user enumeration by timing
        raise ApiProblem(401, _BAD_LOGIN)
    if not await auth.verify_password(body.password, user.password_hash):
        raise ApiProblem(401, _BAD_LOGIN)
    return json_out(await _bundle(request, user))


@routes.post("/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    c = ctx(request)
    await limit(c.refresh_limit, f"refresh:{client_address(request)}")
    body = await json_body(request, RefreshRequest)
    digest = auth.hash_secret(body.refreshToken)
    stored = await c.store.get_refresh_token(digest)
    now = datetime.now(UTC)
    if stored is None:
        raise ApiProblem(401, "invalid refresh token")
    if stored.revoked_at is not None:
        # A rotated token came back: it was stolen or replayed. Kill the whole family.
        revoked = await c.store.revoke_token_family(stored.family_id)
        log.warning("auth.refresh_reuse", user=stored.user_id, revoked=revoked)
        raise ApiProblem(401, "refresh token reuse detected; please log in again")
    if not stored.usable(now):
        raise ApiProblem(401, "refresh token expired")
    # Per account as well as per address; after the reuse check, so that a
    # replayed token always revokes its family.
    await limit(c.per_account, f"refresh:{stored.user_id}")
    raw, new_digest = auth.new_refresh_token()
    if not await c.store.rotate_refresh_token(digest, new_digest, c.tokens.refresh_expiry(now)):
        await c.store.revoke_token_family(stored.family_id)
        raise ApiProblem(401, "refresh token reuse detected; please log in again")
    return json_out(TokenPair(accessToken=c.tokens.issue_access(stored.user_id), refreshToken=raw))
