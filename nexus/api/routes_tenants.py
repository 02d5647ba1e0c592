"""/api/v1/me, /api/v1/tenants and their API keys."""

from __future__ import annotations

from datetime import datetime

import structlog
from aiohttp import web

from nexus.api import auth
from nexus.api.context import (
    ctx,
    json_body,
    owned_tenant,
    principal,
    require_user,
)
from nexus.api.errors import ApiProblem, json_out
from nexus.api.models import (
    Deleted,
    KeyCreated,
    KeyCreateRequest,
    KeyOut,
    MeKey,
    MeUser,
    Revoked,
    TenantCreateRequest,
    TenantOut,
    TenantRef,
)
from nexus.api.store import Tenant, format_ts
from nexus.domain.resources import TENANTS, TenantPhase
from nexus.domain.tenant import TenantStatus, tenant_body
from nexus.runtime import ApiError

log = structlog.get_logger("nexus.api.tenants")
routes = web.RouteTableDef()


def _ts(value: datetime | None) -> str | None:
    return format_ts(value) if value is not None else None


def tenant_out(request: web.Request, tenant: Tenant) -> TenantOut:
    """The stored tenant merged with the live status of its NexusTenant (from the cache)."""
    c = ctx(request)
    status = TenantStatus.of(c.cache.get(TENANTS, tenant.cr_name, c.settings.system_namespace))
    return TenantOut(
        id=tenant.id,
        crName=tenant.cr_name,
        displayName=tenant.display_name,
        nodeProfile=tenant.node_profile,
        phase=status.phase,
        namespace=status.namespace,
        nodeEndpoint=status.node_endpoint,
        agentCount=status.agent_count,
        nodeAvailable=status.node_available,
    )


@routes.get("/api/v1/me")
async def me(request: web.Request) -> web.Response:
    p = principal(request)
    if p.user is not None:
        tenants = await ctx(request).store.list_user_tenants(p.user.id)
        return json_out(
            MeUser(
                id=p.user.id,
                email=p.user.email,
                displayName=p.user.display_name,
                tenants=[tenant_out(request, t) for t in tenants],
            )
        )
    assert p.key is not None and p.key_tenant is not None
    t = p.key_tenant
    return json_out(
        MeKey(
            tenant=TenantRef(id=t.id, crName=t.cr_name, displayName=t.display_name),
            keyHash=p.key.hash,
        )
    )


@routes.post("/api/v1/tenants")
async def create_tenant(request: web.Request) -> web.Response:
    user = require_user(request)
    body = await json_body(request, TenantCreateRequest)
    c = ctx(request)
    tenant = await c.store.create_tenant(user.id, body.displayName, body.nodeProfile)
    cr = tenant_body(
        tenant.cr_name,
        c.settings.system_namespace,
        tenant_id=tenant.id,
        display_name=body.displayName,
        node_profile=body.nodeProfile,
        quota=c.settings.tenant_quota,
    )
    try:
        await c.kube.create(TENANTS, cr)
    except (ApiError, ConnectionError, OSError) as exc:
        # One unit: without its custom resource the stored tenant must not exist either.
        await c.store.purge_tenant(tenant.id)
        log.error("api.tenant_create_failed", tenant=tenant.id, error=str(exc))
        raise ApiProblem(503, "could not create the tenant in the cluster; retry") from None
    log.info("api.tenant_created", tenant=tenant.id, cr=tenant.cr_name, user=user.id)
    out = tenant_out(request, tenant)
    return json_out(out.model_copy(update={"phase": TenantPhase.PENDING}), status=201)


@routes.get("/api/v1/tenants")
async def list_tenants(request: web.Request) -> web.Response:
    p = principal(request)
    if p.key_tenant is not None:
        return json_out([tenant_out(request, p.key_tenant)])
    user = require_user(request)
    tenants = await ctx(request).store.list_user_tenants(user.id)
    return json_out([tenant_out(request, t) for t in tenants])


@routes.get("/api/v1/tenants/{tenant_id}")
async def get_tenant(request: web.Request) -> web.Response:
    tenant = await owned_tenant(request, request.match_info["tenant_id"])
    return json_out(tenant_out(request, tenant))


@routes.delete("/api/v1/tenants/{tenant_id}")
async def delete_tenant(request: web.Request) -> web.Response:
    tenant = await owned_tenant(request, request.match_info["tenant_id"])
    c = ctx(request)
    try:
        await c.kube.delete(
            TENANTS, tenant.cr_name, c.settings.system_namespace, ignore_not_found=True
        )
    except (ApiError, ConnectionError, OSError) as exc:
        log.error("api.tenant_delete_failed", tenant=tenant.id, error=str(exc))
        raise ApiProblem(503, "could not delete the tenant in the cluster; retry") from None
    await c.store.delete_tenant(tenant.id)  # also revokes its keys
    c.credentials.invalidate_tenant(tenant.id)
    log.info("api.tenant_deleted", tenant=tenant.id)
    return json_out(Deleted(deleted=tenant.id))


@routes.post("/api/v1/tenants/{tenant_id}/keys")
async def create_key(request: web.Request) -> web.Response:
    tenant = await owned_tenant(request, request.match_info["tenant_id"])
    body = await json_body(request, KeyCreateRequest)
    raw, digest = auth.new_api_key()
    key = await ctx(request).store.create_api_key(tenant.id, digest, body.label)
    return json_out(
        KeyCreated(rawKey=raw, hash=key.hash, label=key.label, createdAt=format_ts(key.created_at)),
        status=201,
    )


@routes.get("/api/v1/tenants/{tenant_id}/keys")
async def list_keys(request: web.Request) -> web.Response:
    tenant = await owned_tenant(request, request.match_info["tenant_id"])
    keys = await ctx(request).store.list_api_keys(tenant.id)
    return json_out(
        [
            KeyOut(
                hash=k.hash,
                label=k.label,
                createdAt=format_ts(k.created_at),
                lastUsedAt=_ts(k.last_used_at),
            )
            for k in keys
            if k.revoked_at is None
        ]
    )


@routes.delete("/api/v1/tenants/{tenant_id}/keys/{hash}")
async def revoke_key(request: web.Request) -> web.Response:
    tenant = await owned_tenant(request, request.match_info["tenant_id"])
    digest = request.match_info["hash"]
    c = ctx(request)
    if not await c.store.revoke_api_key(tenant.id, digest):
        raise ApiProblem(404, "no such key in this tenant")
    c.credentials.invalidate_key(digest)
    return json_out(Revoked(revoked=digest))
