"""``nexus agents apply|list|get|status|logs|delete``: the agents of a tenant.

``apply`` has kubectl's semantics: create, or replace the spec of the agent of that name; with
``--wait`` it then polls until the agent is Running with ``nodeAck`` (exit 0), ``Failed`` or
``--timeout`` (exit 1), showing each phase change (see :mod:`nexus.client_cli.progress`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nexus.client_cli import render
from nexus.client_cli.agent_file import read_agent_file
from nexus.client_cli.context import Context, q
from nexus.client_cli.http import ApiError, Auth, CliError, NexusClient, Unreachable
from nexus.client_cli.progress import Progress

# Seconds between two GETs of the agent while waiting.
POLL_INTERVAL = 1.0


def _ready_condition(detail: Any) -> dict[str, Any]:
    status = (detail or {}).get("status") if isinstance(detail, dict) else None
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond
    return {}


def _observed_generation(detail: Any) -> int | None:
    gen = _ready_condition(detail).get("observedGeneration")
    return gen if isinstance(gen, int) else None


async def cmd_agents_apply(ctx: Context) -> int:
    doc = read_agent_file(ctx.args.filename)
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        status, body = await c.call_status(
            "POST", "/api/v1/agents", data=doc.raw, content_type=doc.content_type, auth=auth
        )
        stale_generation: int | None = None
        if status == 409 and doc.name:
            # Apply semantics: it exists, so replace its spec.
            path = f"/api/v1/agents/{q(doc.name)}"
            before = await c.call("GET", path, auth=auth)
            body = await c.call("PUT", path, data=doc.raw, content_type=doc.content_type, auth=auth)
            changed = before.get("spec") != doc.data
            action = "configured" if changed else "unchanged"
            if changed:
                # Its status still describes the old spec until the controller catches up.
                stale_generation = _observed_generation(before)
        elif status >= 400:
            raise ApiError(status, body)
        else:
            action = "created"
        name = str(body.get("name") or doc.name)
        if ctx.json:
            ctx.dump(body)
        else:
            ctx.out(f"agent {name} {action}")
        if not ctx.args.wait:
            return 0
        return await wait_for_agent(
            ctx, c, auth, name, timeout=ctx.args.timeout, stale_generation=stale_generation
        )


async def wait_for_agent(
    ctx: Context,
    client: NexusClient,
    auth: Auth,
    name: str,
    *,
    timeout: float,
    stale_generation: int | None = None,
) -> int:
    """Poll until Running with nodeAck (0); Failed or timeout raise (exit 1).

    ``stale_generation``: after an update, a status observed at this generation or earlier
    describes the previous spec and cannot end the wait.
    """
    with Progress(ctx.stderr.console, name) as progress:
        await _poll_until_running(
            client, auth, name, progress, timeout=timeout, stale_generation=stale_generation
        )
    done = f"agent {name} is Running (nodeAck) after {progress.elapsed()}"
    (ctx.note if ctx.json else ctx.out)(done)
    return 0


async def _poll_until_running(
    client: NexusClient,
    auth: Auth,
    name: str,
    progress: Progress,
    *,
    timeout: float,
    stale_generation: int | None,
) -> None:
    deadline = time.monotonic() + timeout
    path = f"/api/v1/agents/{q(name)}"
    phase = "Pending"
    while True:
        try:
            # A slow answer must not stretch the wait past --timeout.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.5)):
                detail = await client.call("GET", path, auth=auth)
        except TimeoutError:
            detail = None  # the deadline check below reports it
        except ApiError as exc:
            if exc.status < 500 and exc.status != 429:
                raise
            detail = None  # transient: keep waiting
            progress.update(phase, False, f"(server: {exc.message})")
        except Unreachable as exc:
            detail = None
            progress.update(phase, False, f"({exc.message})")
        if isinstance(detail, dict):
            status = detail.get("status") or {}
            phase = str(status.get("phase") or "Pending")
            node_ack = bool(status.get("nodeAck"))
            cond = _ready_condition(detail)
            message = str(cond.get("message") or "")
            observed = _observed_generation(detail)
            fresh = stale_generation is None or (
                observed is not None and observed > stale_generation
            )
            if not fresh:
                progress.update("Pending", False, "waiting for the update to be picked up")
            else:
                progress.update(phase, node_ack, message)
                if phase == "Running" and node_ack:
                    return
                if phase == "Failed":
                    reason = cond.get("reason")
                    raise CliError(
                        f"agent {name} failed"
                        + (f" ({reason})" if reason else "")
                        + (f": {message}" if message else "")
                    )
        left = deadline - time.monotonic()
        if left <= 0:
            raise CliError(
                f"timed out after {render.human_duration(timeout)} waiting for agent "
                f"{name} to be Running (phase {phase})"
            )
        # On a terminal the spinner keeps turning meanwhile (rich redraws it from its thread).
        await asyncio.sleep(min(POLL_INTERVAL, left))


async def cmd_agents_list(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        items = await c.call("GET", "/api/v1/agents", auth=auth)
    if ctx.json:
        ctx.dump(items)
    elif not items:
        ctx.note("No agents found" + (f" in tenant {auth.tenant}." if auth.tenant else "."))
    else:
        ctx.show(render.agents_table(items))
    return 0


async def cmd_agents_get(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        agent = await c.call("GET", f"/api/v1/agents/{q(ctx.args.name)}", auth=auth)
    if ctx.json:
        ctx.dump(agent)
    else:
        ctx.show(render.agent_detail_row(agent))
        cond = _ready_condition(agent)
        if cond.get("message"):
            ctx.out(f"\nReady: {cond.get('status')} ({cond.get('reason')}): {cond['message']}")
    return 0


async def cmd_agents_status(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        body = await c.call("GET", f"/api/v1/agents/{q(ctx.args.name)}/status", auth=auth)
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.show(render.agent_status(body))
    return 0


async def cmd_agents_logs(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        body = await c.call(
            "GET",
            f"/api/v1/agents/{q(ctx.args.name)}/logs",
            params={"lines": str(ctx.args.lines)},
            auth=auth,
        )
    if ctx.json:
        ctx.dump(body)
    elif not body.get("lines"):
        ctx.note(f"No log lines for agent {ctx.args.name}.")
    else:
        ctx.show(render.log_lines(body), soft_wrap=True)
    return 0


async def cmd_agents_delete(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        body = await c.call("DELETE", f"/api/v1/agents/{q(ctx.args.name)}", auth=auth)
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.out(f"agent {ctx.args.name} deleted")
    return 0
