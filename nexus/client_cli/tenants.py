"""``nexus tenants create|list|get|delete`` and ``nexus use`` (the current tenant)."""

from __future__ import annotations

from nexus.client_cli import render
from nexus.client_cli.context import Context, q
from nexus.client_cli.http import Auth


async def cmd_tenants_create(ctx: Context) -> int:
    creds = ctx.session()
    body = {"displayName": ctx.args.display_name, "nodeProfile": ctx.args.node_profile}
    async with ctx.client(creds) as c:
        tenant = await c.call("POST", "/api/v1/tenants", json_body=body, auth=Auth(session=True))
    if ctx.json:
        ctx.dump(tenant)
    else:
        ctx.out(f"tenant {tenant.get('id')} created (phase {tenant.get('phase')})")
        if creds.tenant is None:
            ctx.note(f"Run `nexus use {tenant.get('id')}` to make it the current tenant.")
    return 0


async def cmd_tenants_list(ctx: Context) -> int:
    creds = ctx.session()
    async with ctx.client(creds) as c:
        items = await c.call("GET", "/api/v1/tenants", auth=Auth(session=True))
    if ctx.json:
        ctx.dump(items)
    elif not items:
        ctx.note("No tenants found.")
    else:
        ctx.show(render.tenants_table(items))
    return 0


async def cmd_tenants_get(ctx: Context) -> int:
    creds = ctx.session()
    async with ctx.client(creds) as c:
        tenant = await c.call(
            "GET", f"/api/v1/tenants/{q(ctx.args.tenant_id)}", auth=Auth(session=True)
        )
    if ctx.json:
        ctx.dump(tenant)
    else:
        ctx.show(render.tenants_table([tenant]))
    return 0


async def cmd_tenants_delete(ctx: Context) -> int:
    creds = ctx.session()
    tenant_id = ctx.args.tenant_id
    async with ctx.client(creds) as c:
        body = await c.call("DELETE", f"/api/v1/tenants/{q(tenant_id)}", auth=Auth(session=True))
    if creds.tenant == tenant_id:
        creds.tenant = None
        ctx.store.save(creds)
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.out(f"tenant {tenant_id} deleted")
    return 0


async def cmd_use(ctx: Context) -> int:
    creds = ctx.session()
    tenant_id = ctx.args.tenant_id
    async with ctx.client(creds) as c:
        tenant = await c.call("GET", f"/api/v1/tenants/{q(tenant_id)}", auth=Auth(session=True))
    creds.tenant = tenant_id
    ctx.store.save(creds)
    if ctx.json:
        ctx.dump(tenant)
    else:
        name = tenant.get("displayName") if isinstance(tenant, dict) else None
        ctx.out(f"Now using tenant {tenant_id}" + (f" ({name})." if name else "."))
    return 0
