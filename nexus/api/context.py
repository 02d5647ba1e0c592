"""What handlers share: settings, the store, tokens, the cluster, and the caller's identity."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from nexus.api.auth import InvalidToken, TokenService, hash_secret, looks_like_api_key
from nexus.api.credcache import CredentialCache
from nexus.api.errors import ApiProblem, validation_errors
from nexus.api.ratelimit import RateLimiter
from nexus.api.store import ApiKey, Store, StoreError, Tenant, User
from nexus.domain.tenant import ResourceQuota
from nexus.node import NodeClient
from nexus.runtime import Cache, Client

AUTH_BODY_LIMIT = 16 * 1024
JSON_TYPES = frozenset({"application/json"})


@dataclass(frozen=True)
class ApiSettings:
    #: Nexus's own namespace, where the NexusTenant objects live.
    system_namespace: str
    #: ``resourceQuota`` of the tenants the API creates.
    tenant_quota: ResourceQuota
    #: /auth/* limits (requests, per seconds): per client address, and per account (email).
    auth_per_address: tuple[int, float] = (30, 60.0)
    auth_per_account: tuple[int, float] = (10, 60.0)
    refresh_per_address: tuple[int, float] = (60, 60.0)


@dataclass
class ApiContext:
    """Everything a handler needs; one per application."""

    settings: ApiSettings
    store: Store
    tokens: TokenService
    kube: Client
    cache: Cache
    node: NodeClient
    ready_checks: dict[str, Any] = field(default_factory=dict)
    credentials: CredentialCache = field(default_factory=CredentialCache)
    per_address: RateLimiter = field(init=False)
    per_account: RateLimiter = field(init=False)
    refresh_limit: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        # From the store: counted in the database when replicas share one (PostgreSQL).
        self.per_address = self.store.rate_limiter(*self.settings.auth_per_address)
        self.per_account = self.store.rate_limiter(*self.settings.auth_per_account)
        self.refresh_limit = self.store.rate_limiter(*self.settings.refresh_per_address)


CTX = web.AppKey("nexus.api.context", ApiContext)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]


# -- bodies -----------------------------------------------------------------------------------


def media_type(request: web.Request) -> str:
    return (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` (before any parsing)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiProblem(413, f"request body exceeds {limit} bytes")
    # StreamReader.read(n) returns what is buffered (up to n), not n bytes: read to the end.
    raw = bytearray()
    while chunk := await request.content.read(limit + 1 - len(raw)):
        raw += chunk
        if len(raw) > limit:
            raise ApiProblem(413, f"request body exceeds {limit} bytes")
    return bytes(raw)


async def json_body[M: BaseModel](
    request: web.Request, model: type[M], limit: int = AUTH_BODY_LIMIT
) -> M:
    if media_type(request) not in JSON_TYPES:
        raise ApiProblem(415, "Content-Type must be application/json")
    raw = await read_limited(request, limit)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiProblem(400, "malformed JSON body") from None
    if not isinstance(data, dict):
        raise ApiProblem(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiProblem(400, errors=validation_errors(exc)) from None


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


async def limit(limiter: RateLimiter, key: str) -> None:
    wait = await limiter.hit(key)
    if wait is not None:
        raise ApiProblem(
            429, "too many requests; retry later", headers={"Retry-After": str(math.ceil(wait))}
        )


# -- identity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (JWT) or a tenant-scoped API key."""

    user: User | None = None
    key: ApiKey | None = None
    key_tenant: Tenant | None = None


PRINCIPAL = web.AppKey("nexus.api.principal", Principal)


async def authenticate(request: web.Request) -> Principal:
    """Bearer JWT first; then ``X-API-Key`` (or ``Bearer nxk_...``); else 401.

    An unusable Bearer token falls through to the API key (a client with a stale token and a
    good key is served through the key); an ``X-API-Key`` that is sent must be valid, even next
    to a valid token, or the request is refused.
    """
    c = ctx(request)
    header = request.headers.get("Authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
    sent_key = request.headers.get("X-API-Key")
    try:
        resolved = None
        if sent_key is not None:
            # Resolved once: it is also the key the request acts with if no token is valid.
            resolved = await _resolve_key(c, hash_secret(sent_key))
            if resolved is None:
                raise ApiProblem(401, "missing or invalid credentials")
        if bearer and not looks_like_api_key(bearer):
            user = await _user_from_token(c, bearer)
            if user is not None:
                return Principal(user=user)
        if resolved is None and bearer and looks_like_api_key(bearer):
            resolved = await _resolve_key(c, hash_secret(bearer))
        if resolved is not None:
            return Principal(key=resolved[0], key_tenant=resolved[1])
    except StoreError:
        raise ApiProblem(503, "the credential store is unavailable") from None
    raise ApiProblem(401, "missing or invalid credentials")


async def _user_from_token(c: ApiContext, token: str) -> User | None:
    try:
        user_id = c.tokens.verify_access(token)
    except InvalidToken:
        return None
    user = c.credentials.user(user_id)
    if user is None:
        since = c.credentials.generation  # an invalidation during the read drops the put
        user = await c.store.get_user(user_id)
        if user is not None:
            c.credentials.put_user(user, since)
    return user


async def _resolve_key(c: ApiContext, key_hash: str) -> tuple[ApiKey, Tenant] | None:
    cached = c.credentials.key(key_hash)
    if cached is not None:
        return cached
    since = c.credentials.generation  # an invalidation during the reads drops the put
    key = await c.store.lookup_api_key(key_hash)
    if key is None:
        return None
    tenant = await c.store.get_tenant(key.tenant_id)
    if tenant is None:
        return None
    c.credentials.put_key(key, tenant, since)
    return key, tenant


def principal(request: web.Request) -> Principal:
    p: Principal = request["principal"]
    return p


def require_user(request: web.Request) -> User:
    p = principal(request)
    if p.user is None:
        raise ApiProblem(401, "this route needs a user access token, not an API key")
    return p.user


async def owned_tenant(request: web.Request, tenant_id: str) -> Tenant:
    """A tenant the calling user owns (403 otherwise, as for a tenant that does not exist)."""
    user = require_user(request)
    c = ctx(request)
    if not await c.store.user_owns_tenant(user.id, tenant_id):
        raise ApiProblem(403, "you do not own this tenant")
    tenant = await c.store.get_tenant(tenant_id)
    if tenant is None:
        raise ApiProblem(403, "you do not own this tenant")
    return tenant


async def acting_tenant(request: web.Request) -> Tenant:
    """The tenant a tenant-scoped call acts in: the key's, or the JWT user's X-Tenant-ID."""
    p = principal(request)
    asked = request.headers.get("X-Tenant-ID")
    if p.key_tenant is not None:
        if asked is not None and asked != p.key_tenant.id:
            raise ApiProblem(403, "an API key cannot act in another tenant")
        return p.key_tenant
    if not asked:
        raise ApiProblem(400, "X-Tenant-ID is required with a user access token")
    return await owned_tenant(request, asked)
