"""``nexus keys create|list|revoke``: the API keys of a tenant."""

from __future__ import annotations

from nexus.client_cli import render
from nexus.client_cli.context import Context, q
from nexus.client_cli.http import Auth


async def cmd_keys_create(ctx: Context) -> int:
    creds = ctx.session()
    tenant = ctx.session_tenant(creds)
    async with ctx.client(creds) as c:
        key = await c.call(
            "POST",
            f"/api/v1/tenants/{q(tenant)}/keys",
            json_body={"label": ctx.args.label},
            auth=Auth(session=True),
        )
    if ctx.json:
        ctx.dump(key)
    else:
        # The raw key alone on stdout (KEY=$(nexus keys create ...)); the rest on stderr.
        ctx.note(
            f"API key {key.get('hash')} created for tenant {tenant}. "
            "Store it now: it will not be shown again."
        )
        ctx.out(str(key.get("rawKey")))
    return 0


async def cmd_keys_list(ctx: Context) -> int:
    creds = ctx.session()
    tenant = ctx.session_tenant(creds)
    async with ctx.client(creds) as c:
        items = await c.call("GET", f"/api/v1/tenants/{q(tenant)}/keys", auth=Auth(session=True))
    if ctx.json:
        ctx.dump(items)
    elif not items:
        ctx.note(f"No API keys in tenant {tenant}.")
    else:
        ctx.show(render.keys_table(items))
    return 0


async def cmd_keys_revoke(ctx: Context) -> int:
    creds = ctx.session()
    tenant = ctx.session_tenant(creds)
    digest = ctx.args.hash
    async with ctx.client(creds) as c:
        body = await c.call(
            "DELETE", f"/api/v1/tenants/{q(tenant)}/keys/{q(digest)}", auth=Auth(session=True)
        )
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.out(f"key {digest} revoked")
    return 0
