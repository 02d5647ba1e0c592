"""Liveness and readiness endpoints in controller-runtime's text format.

``GET /healthz`` and ``GET /readyz`` answer ``ok`` (200) when every check passes; otherwise 500
with one ``[+]name ok`` / ``[-]name failed: reason withheld`` line per check, then
``healthz check failed``. ``?verbose`` lists the checks on success too, ``?exclude=name`` skips
one, and ``/healthz/<name>`` runs a single check. The probe server starts before the caches
sync, so that a slow sync shows as "not ready" rather than "not running".
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("nexus.healthz")

#: A check raises (any exception) or returns a non-empty string to report failure.
Checker = Callable[[], str | Awaitable[str | None] | None]

CHECK_TIMEOUT = 5.0


def ping() -> None:
    """Always healthy: the process answers."""


async def run_check(check: Checker) -> str | None:
    """None when healthy, else the reason."""
    try:
        result = check()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, CHECK_TIMEOUT)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return result or None


class ProbeHandler:
    """Serves one family of checks (``healthz`` or ``readyz``) with sub-paths per check."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.checks: dict[str, Checker] = {}

    def add(self, name: str, check: Checker) -> None:
        if "/" in name or not name:
            raise ValueError(f"invalid check name {name!r}")
        self.checks[name] = check

    async def results(self, exclude: set[str] | None = None) -> dict[str, str | None]:
        names = [n for n in sorted(self.checks) if n not in (exclude or set())]
        outcomes = await asyncio.gather(*(run_check(self.checks[n]) for n in names))
        return dict(zip(names, outcomes, strict=True))

    async def handle_all(self, request: web.Request) -> web.Response:
        exclude = set(request.query.getall("exclude", []))
        results = await self.results(exclude)
        failed = [n for n, r in results.items() if r is not None]
        verbose = "verbose" in request.query
        if not failed and not verbose:
            return web.Response(text="ok")
        lines = []
        for name, reason in results.items():
            if reason is None:
                lines.append(f"[+]{name} ok")
            else:
                lines.append(f"[-]{name} failed: reason withheld")
                log.info("healthz.check_failed", probe=self.kind, check=name, reason=reason)
        if failed:
            lines.append(f"{self.kind} check failed")
            return web.Response(status=500, text="\n".join(lines) + "\n")
        lines.append(f"{self.kind} check passed")
        return web.Response(text="\n".join(lines) + "\n")

    async def handle_one(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        check = self.checks.get(name)
        if check is None:
            return web.Response(status=404, text=f"no such {self.kind} check: {name}\n")
        reason = await run_check(check)
        if reason is None:
            return web.Response(text="ok")
        return web.Response(status=500, text=f"internal server error: {reason}\n")


def probe_app(healthz: ProbeHandler, readyz: ProbeHandler) -> web.Application:
    app = web.Application()
    for handler in (healthz, readyz):
        app.router.add_get(f"/{handler.kind}", handler.handle_all)
        app.router.add_get(f"/{handler.kind}/", handler.handle_all)
        app.router.add_get(f"/{handler.kind}/{{name}}", handler.handle_one)
    return app


def metrics_app() -> web.Application:
    """``/metrics`` from the runtime's registry (prometheus-async's aiohttp handler)."""
    from prometheus_async.aio.web import server_stats

    app = web.Application()
    app.router.add_get("/metrics", server_stats)
    return app


def parse_bind_address(address: str) -> tuple[str, int] | None:
    """``:8081`` -> ("0.0.0.0", 8081); ``127.0.0.1:0`` keeps the host; ``0`` or "" disables."""
    if address in ("", "0"):
        return None
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0", int(port))


class HttpServer:
    """An aiohttp application bound to an address; ``port`` is known after start."""

    def __init__(self, name: str, app: web.Application, address: tuple[str, int]) -> None:
        self.name = name
        self.app = app
        self.address = address
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address[0], self.address[1])
        await site.start()
        # An ephemeral port (":0", in tests) is only known once bound.
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.address[1]
        log.info("server.started", server=self.name, host=self.address[0], port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
