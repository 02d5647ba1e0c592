"""Helpers for the reliability tests: a manager without the API, kubeconfigs that point at a
proxy, a counting HTTP proxy in front of a node, /metrics scraping and polling."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from nexus.domain.resources import AGENTS, TENANT_NAMESPACE_LABEL, TENANTS
from nexus.runtime.client import ApiError, Client
from nexus.runtime.envtest import Environment, EnvtestError, free_port
from nexus.runtime.resource import NAMESPACES, Resource

from .manager import ManagerProcess
from .tcpproxy import TcpProxy

SYSTEM_NS = "nexus-system"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Object = dict[str, Any]


# -- polling ------------------------------------------------------------------------------------


async def eventually[T](
    probe: Callable[[], Awaitable[T] | T],
    *,
    timeout: float,
    interval: float = 0.2,
    message: str | Callable[[], str] = "",
) -> T:
    """Poll ``probe`` (sync or async) until it returns something truthy; returns that value.

    Fails with ``message`` (or its result, for context computed at failure time) and the last
    value seen once ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        result = probe()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"not reached within {timeout}s: {text} (last: {last!r})"[:6000])
        await asyncio.sleep(interval)


# -- objects ------------------------------------------------------------------------------------


def tenant_body(name: str, ns: str = SYSTEM_NS, *, max_agents: int = 10) -> Object:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "displayName": f"Tenant {name}",
            "nodeProfile": "full",
            "resourceQuota": {"maxAgents": max_agents, "cpu": "1", "memory": "1Gi"},
        },
    }


def agent_body(name: str, ns: str, **extra: Any) -> Object:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "agentSpec": {
                "apiVersion": "astromesh/v1",
                "kind": "Agent",
                "metadata": {"name": name, "version": "1.0.0"},
                "spec": {
                    "identity": {"display_name": name},
                    "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
                    "orchestration": {"pattern": "react"},
                },
            },
            **extra,
        },
    }


def phase_of(obj: Object | None) -> str | None:
    if obj is None:
        return None
    phase: str | None = (obj.get("status") or {}).get("phase")
    return phase


async def bounded(items: Iterable[Any], fn: Callable[[Any], Awaitable[Any]], limit: int) -> None:
    """Run ``fn`` over ``items`` with at most ``limit`` calls in flight."""
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


# -- kubeconfig ---------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kubeconfig for ``server`` (e.g. a TcpProxy's URL) with a bearer token, TLS unchecked."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "faulty", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "faulty", "context": {"cluster": "faulty", "user": "admin"}}],
        "current-context": "faulty",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def apiserver_port(env: Environment) -> int:
    return int(env.host.rsplit(":", 1)[1])


async def restart_apiserver(env: Environment, *, kill: bool = True, attempts: int = 3) -> None:
    """Restart kube-apiserver, starting it again if it dies while coming up.

    kube-apiserver 1.20 exits on start-up (klog ``F... Unable to perform initial IP allocation
    check: ... the provided resource version does not match``) when Services are created while
    its service-IP repair runs, which is just what a manager catching up does. A supervisor
    (kubelet, systemd) would start it again; so does this, on top of the one retry that
    :class:`Environment` makes itself.
    """
    await env.stop_apiserver(kill=kill)
    for attempt in range(attempts):
        try:
            await env.start_apiserver()
            return
        except EnvtestError as exc:
            if attempt == attempts - 1:
                raise
            print(f"kube-apiserver died while starting, starting it again: {str(exc)[:200]}")
            await env.stop_apiserver(kill=True)  # in case it is up but was not ready in time


# -- the manager process ------------------------------------------------------------------------


class NexusManager(ManagerProcess):
    """``nexus manager`` as a subprocess, by default without the REST API.

    Ready means the probe server's ``/readyz`` answers 200 (caches synced); that holds on a
    leader-election standby too.
    """

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        node_url: str = "http://127.0.0.1:9",
        extra: list[str] | None = None,
        api: bool = False,
        jwt_secret: str | None = None,
        log_level: str = "info",
        database: str | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            kubeconfig,
            workdir,
            node_url=node_url,
            extra=[f"--log-level={log_level}", *(extra or [])],
            jwt_secret=jwt_secret,
            database=database,
        )
        self.api = api

    def args(self) -> list[str]:
        args = super().args()
        if not self.api:
            args = [a for a in args if not a.startswith("--api-bind-address=")]
            args.insert(4, "--api-bind-address=0")
        return args

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> None:
        if self.api:
            await super().start(timeout)
            return
        await self.spawn()
        await self.wait_ready(timeout)

    async def spawn(self) -> None:
        """Start the process without waiting for anything."""
        env = {**os.environ, "NEXUS_JWT_SECRET": self.jwt_secret}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.probe_port}/readyz"
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"nexus manager exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(url) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"nexus manager not ready after {timeout}s: {self.log_tail()}")

    async def metrics(self) -> Metrics:
        return await scrape(self.metrics_port)

    def log_lines(self, event: str) -> list[str]:
        """Log lines of this process mentioning ``event`` (JSON logs)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if f'"{event}"' in line]


# -- metrics ------------------------------------------------------------------------------------


class Metrics:
    """One scrape of a Prometheus text page."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, metric: str, /, **labels: str) -> float:
        """Sum of the samples called ``metric`` whose labels include ``labels``."""
        return sum(
            v
            for n, lab, v in self.samples
            if n == metric and all(lab.get(k) == want for k, want in labels.items())
        )

    def requests(self, *, writes_only: bool = False) -> Counter[tuple[str, str]]:
        """``rest_client_requests_total`` by (method, code)."""
        out: Counter[tuple[str, str]] = Counter()
        for n, lab, v in self.samples:
            if n != "rest_client_requests_total":
                continue
            if writes_only and lab["method"] not in WRITE_METHODS:
                continue
            out[(lab["method"], lab["code"])] += int(v)
        return out

    def writes(self) -> int:
        return sum(self.requests(writes_only=True).values())


async def scrape(port: int, timeout: float = 5.0) -> Metrics:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.get(f"http://127.0.0.1:{port}/metrics") as r,
    ):
        return Metrics(await r.text())


# -- a counting HTTP proxy in front of a node ------------------------------------------------


class CountingHttpProxy:
    """Forwards every HTTP request to ``target`` and counts them by (method, path).

    Sits between the manager and an astromesh node: the node's API is an upsert, so only the
    requests themselves show whether an agent was deployed once or twice.
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.calls: Counter[tuple[str, str]] = Counter()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.calls[(request.method, request.path)] += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            async with self._session.request(
                request.method,
                self.target + request.path_qs,
                data=body or None,
                headers=headers,
            ) as resp:
                payload = await resp.read()
                out_headers = {
                    k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS
                }
                return web.Response(status=resp.status, body=payload, headers=out_headers)
        except (aiohttp.ClientError, OSError):
            return web.Response(status=502, text="node unreachable")

    def count(self, method: str, path: str) -> int:
        return self.calls[(method, path)]


_HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}
)


class FaultProxy(TcpProxy):
    """A :class:`TcpProxy` that also tells how many connections it holds open."""

    @property
    def open_connections(self) -> int:
        return len(self._conns)


# -- clean-up ------------------------------------------------------------------------------------


async def purge(kube: Client, system_ns: str) -> None:
    """Remove a case's tenants, agents and namespaces when no manager is left to do it.

    Finalizers are stripped first, so that deletions complete (where a namespace controller
    runs) instead of waiting for a controller that is gone.
    """
    namespaces, _ = await kube.list_all(
        NAMESPACES, label_selector=f"{TENANT_NAMESPACE_LABEL}={system_ns}"
    )
    doomed: list[tuple[Resource, Object]] = []
    for ns in namespaces:
        agents, _ = await kube.list_all(AGENTS, ns["metadata"]["name"])
        doomed.extend((AGENTS, a) for a in agents)
    tenants, _ = await kube.list_all(TENANTS, system_ns)
    doomed.extend((TENANTS, t) for t in tenants)

    async def strip(item: tuple[Resource, Object]) -> None:
        res, obj = item
        meta = obj["metadata"]
        try:
            await kube.patch(
                res, meta["name"], {"metadata": {"finalizers": None}}, meta.get("namespace")
            )
        except ApiError as exc:
            if not exc.not_found:
                raise

    async def delete_namespace(name: str) -> None:
        await kube.delete(NAMESPACES, name, ignore_not_found=True)

    await bounded(doomed, strip, 32)
    names = [ns["metadata"]["name"] for ns in namespaces]
    await bounded([*names, system_ns], delete_namespace, 32)
