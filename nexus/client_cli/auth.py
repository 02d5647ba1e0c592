"""``nexus register``, ``nexus login`` and ``nexus logout``: the stored session."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from nexus.client_cli.config import Credentials
from nexus.client_cli.context import Context
from nexus.client_cli.http import CliError


def _read_password(ctx: Context, *, confirm: bool) -> str:
    args = ctx.args
    if args.password_stdin:
        text = sys.stdin.readline() if sys.stdin.isatty() else sys.stdin.read()
        password = text.rstrip("\r\n")
    elif args.password is not None:
        ctx.note("warning: --password is visible to other local users; prefer --password-stdin")
        password = args.password
    else:
        try:
            password = getpass.getpass("Password: ")
            if confirm and getpass.getpass("Confirm password: ") != password:
                raise CliError("the passwords do not match")
        except EOFError:
            raise CliError("no password given") from None
    if not password:
        raise CliError("the password is empty")
    return password


def _save_session(ctx: Context, bundle: Any) -> Credentials:
    if not isinstance(bundle, dict) or not all(
        isinstance(bundle.get(k), str) for k in ("accessToken", "refreshToken")
    ):
        raise CliError("unexpected answer from the server (no tokens)")
    user = bundle.get("user") if isinstance(bundle.get("user"), dict) else {}
    previous = ctx.stored
    tenant = None
    if (
        previous is not None
        and previous.server == ctx.server
        and previous.user.get("id") == (user or {}).get("id")
    ):
        tenant = previous.tenant  # logging in again keeps the current tenant
    creds = Credentials(
        server=ctx.server,
        access_token=bundle["accessToken"],
        refresh_token=bundle["refreshToken"],
        user=dict(user or {}),
        tenant=tenant,
    )
    ctx.store.save(creds)
    return creds


def _session_view(creds: Credentials) -> dict[str, Any]:
    return {"server": creds.server, "user": creds.user, "tenant": creds.tenant}


async def cmd_login(ctx: Context) -> int:
    password = _read_password(ctx, confirm=False)
    async with ctx.client() as c:
        bundle = await c.call(
            "POST", "/auth/login", json_body={"email": ctx.args.email, "password": password}
        )
    creds = _save_session(ctx, bundle)
    if ctx.json:
        ctx.dump(_session_view(creds))
    else:
        who = creds.user.get("email") or ctx.args.email
        ctx.out(f"Logged in to {creds.server} as {who}.")
    return 0


async def cmd_register(ctx: Context) -> int:
    password = _read_password(ctx, confirm=True)
    body = {"email": ctx.args.email, "password": password, "displayName": ctx.args.display_name}
    async with ctx.client() as c:
        bundle = await c.call("POST", "/auth/register", json_body=body)
    creds = _save_session(ctx, bundle)
    if ctx.json:
        ctx.dump(_session_view(creds))
    else:
        who = creds.user.get("email") or ctx.args.email
        ctx.out(f"Registered {who} and logged in to {creds.server}.")
        ctx.note("Next: `nexus tenants create --display-name NAME`, then `nexus use ID`.")
    return 0


async def cmd_logout(ctx: Context) -> int:
    existed = ctx.store.delete()
    if ctx.json:
        ctx.dump({"loggedOut": existed})
    else:
        ctx.out("Logged out." if existed else "Not logged in.")
    return 0
