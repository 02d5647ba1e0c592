"""The aiohttp application and the runnable that serves it inside ``nexus manager``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from nexus.api import routes_agents, routes_auth, routes_tenants
from nexus.api.context import CTX, ApiContext, authenticate
from nexus.api.errors import error_middleware
from nexus.api.openapi import build_openapi
from nexus.runtime.healthz import HttpServer, parse_bind_address

log = structlog.get_logger("nexus.api")

ReadyCheck = Callable[[], Awaitable[str | None] | str | None]

#: Time one check of the API's /readyz may take before it counts as failed (s), so that a
#: hanging database makes the answer "not ready" rather than no answer at all.
READY_CHECK_TIMEOUT = 5.0


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        request["principal"] = await authenticate(request)
    response: web.StreamResponse = await handler(request)
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    c = request.app[CTX]
    checks: dict[str, str] = {}
    ok = True
    for name, check in c.ready_checks.items():
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await asyncio.wait_for(result, READY_CHECK_TIMEOUT)
        except Exception as exc:
            result = f"{type(exc).__name__}: {exc}"
        checks[name] = "ok" if not result else str(result)
        ok = ok and not result
    status = {"status": "ready" if ok else "not_ready", "checks": checks}
    return web.json_response(status, status=200 if ok else 503)


def create_app(context: ApiContext) -> web.Application:
    # aiohttp's own body cap sits above ours, so that our 413 answers first, as JSON.
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=2**21)
    app[CTX] = context
    openapi = build_openapi()

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(openapi)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_json)
    app.add_routes(routes_auth.routes)
    app.add_routes(routes_tenants.routes)
    app.add_routes(routes_agents.routes)
    return app


class ApiServer:
    """Serves the REST API on every replica (it does not need leadership).

    Stopping it closes its store; the node client is shared, and closed by its owner.
    """

    need_leader_election = False

    def __init__(self, context: ApiContext, bind_address: str) -> None:
        address = parse_bind_address(bind_address)
        if address is None:
            raise ValueError("the API needs a bind address")
        self.context = context
        self._server = HttpServer("api", create_app(context), address)

    @property
    def port(self) -> int | None:
        return self._server.port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()
        await self.context.store.close()
