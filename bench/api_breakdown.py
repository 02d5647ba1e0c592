"""Where the time of ``GET /api/v1/agents`` goes, stage by stage, in this process.

No network and no control plane: each stage of the request is timed on its own, with 100
cached agents, against the handler that ``bench/api_throughput.py``'s bare aiohttp floor runs
(``web.json_response`` of the same list):

* the middleware chain (error JSON + authentication) around a handler that does nothing;
* authentication with an API key found in the credential cache (the common case);
* the cache read (the tenant's agents from the informer, sorted);
* building the items, then serialising them (``json`` as before, ``orjson`` now);
* the whole handler, through the middlewares, as aiohttp calls it.

    .venv/bin/python -m bench.api_breakdown [--agents 100] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bench.common import table
from nexus.api import routes_agents
from nexus.api.auth import hash_secret
from nexus.api.context import CTX, ApiContext, ApiSettings, authenticate
from nexus.api.credcache import CredentialCache
from nexus.api.errors import error_middleware
from nexus.api.server import auth_middleware
from nexus.api.store.base import ApiKey, Tenant
from nexus.domain.agent import AgentView
from nexus.domain.resources import AGENTS
from nexus.domain.tenant import ResourceQuota
from nexus.runtime.cache import Cache
from nexus.runtime.finalizers import is_being_deleted

NS = "bench"
KEY = "nxk_" + "k" * 40


def agent(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "nexus.astromesh.io/v1alpha1",
        "kind": "NexusAgent",
        "metadata": {
            "name": f"agent-{i:03}",
            "namespace": NS,
            "uid": f"uid-{i}",
            "resourceVersion": str(1000 + i),
            "generation": 1,
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "finalizers": ["nexus.astromesh.io/agent-cleanup"],
        },
        "spec": {
            "agentSpec": {
                "apiVersion": "astromesh/v1",
                "kind": "Agent",
                "metadata": {"name": f"agent-{i:03}", "version": "1.0.0"},
                "spec": {
                    "identity": {"display_name": f"Agent {i}"},
                    "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
                    "orchestration": {"pattern": "react"},
                },
            }
        },
        "status": {
            "phase": "Running",
            "nodeAck": True,
            "lastSyncedAt": "2026-12-01T10:00:01Z",
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Deployed",
                    "message": "agent is deployed on its node",
                    "lastTransitionTime": "2026-12-01T10:00:01Z",
                    "observedGeneration": 1,
                }
            ],
        },
    }


def old_list_item(obj: dict[str, Any]) -> dict[str, Any]:
    """The list item as built before (through AgentView)."""
    view = AgentView.of(obj)
    st = view.status
    return {
        "name": view.name,
        "namespace": view.namespace,
        "version": view.spec.version,
        "phase": st.phase,
        "nodeAck": st.node_ack,
        "lastSyncedAt": st.last_synced_at,
        "createdAt": view.created_at,
    }


class _NoStore:
    """The credential cache answers every lookup here; the store is never asked."""

    def rate_limiter(self, *args: Any) -> Any:
        from nexus.api.ratelimit import SlidingWindowLimiter

        return SlidingWindowLimiter(*args)


def context(n: int) -> ApiContext:
    cache = Cache(cast(Any, None))
    inf = cache.informer_for(AGENTS)
    for i in range(n):
        obj = agent(i)
        inf._put(f"{NS}/{obj['metadata']['name']}", obj)
    credentials = CredentialCache(ttl=3600)
    now = datetime.now(UTC)
    tenant = Tenant(id="t1", cr_name=NS, display_name="Bench", node_profile="full", created_at=now)
    key = ApiKey(hash=hash_secret(KEY), tenant_id="t1", label="b", created_at=now)
    credentials.put_key(key, tenant)
    return ApiContext(
        settings=ApiSettings(system_namespace="nexus-system", tenant_quota=ResourceQuota()),
        store=cast(Any, _NoStore()),
        tokens=cast(Any, None),
        kube=cast(Any, None),
        cache=cache,
        node=cast(Any, None),
        credentials=credentials,
    )


def timeit(fn: Callable[[], Any], repeat: int) -> float:
    """Median of 5 runs of ``repeat`` calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        runs.append((time.perf_counter() - t0) / repeat * 1e6)
    return sorted(runs)[2]


async def atimeit(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            await fn()
        runs.append((time.perf_counter() - t0) / repeat * 1e6)
    return sorted(runs)[2]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    c = context(args.agents)
    app = web.Application()
    app[CTX] = c
    headers = {"X-API-Key": KEY}

    # One request object for every call: building a mocked one costs more than the request.
    req = make_mocked_request("GET", "/api/v1/agents", headers=headers, app=app)

    def request() -> web.Request:
        return req

    async def nothing(request: web.Request) -> web.StreamResponse:
        return web.Response()

    async def chain(handler: Any) -> web.StreamResponse:
        async def inner(r: web.Request) -> web.StreamResponse:
            resp: web.StreamResponse = await auth_middleware(r, handler)
            return resp

        resp: web.StreamResponse = await error_middleware(request(), inner)
        return resp

    items = [old_list_item(a) for a in c.cache.list(AGENTS, NS)]
    new_items = [routes_agents._list_item(a) for a in c.cache.list(AGENTS, NS)]
    assert items == new_items
    data = json.loads(json.dumps(items))

    async def auth() -> None:
        await authenticate(request())

    def cache_read() -> None:
        sorted(
            (a for a in c.cache.list(AGENTS, NS) if not is_being_deleted(a)),
            key=lambda a: a["metadata"]["name"],
        )

    agents = c.cache.list(AGENTS, NS)
    rows_us = {
        "middleware chain around an empty handler": await atimeit(
            lambda: chain(nothing), args.repeat
        ),
        "authentication (API key, credential cache hit)": await atimeit(auth, args.repeat),
        "cache read: list + filter + sort": timeit(cache_read, args.repeat),
        "items, before (AgentView per agent)": timeit(
            lambda: [old_list_item(a) for a in agents], args.repeat // 4
        ),
        "items, now (read from the object)": timeit(
            lambda: [routes_agents._list_item(a) for a in agents], args.repeat // 4
        ),
        "serialise, before (json.dumps compact, to str, encoded)": timeit(
            lambda: json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode(),
            args.repeat // 4,
        ),
        "serialise, now (orjson.dumps)": timeit(lambda: orjson.dumps(items), args.repeat // 4),
        "whole handler through the middlewares (now)": await atimeit(
            lambda: chain(routes_agents.list_agents), args.repeat // 4
        ),
        "bare floor handler: web.json_response(data)": timeit(
            lambda: web.json_response(data), args.repeat // 4
        ),
    }
    rows = [("agents", str(args.agents))]
    rows += [(k, f"{v:8.1f} µs") for k, v in rows_us.items()]
    print(table(rows))
    print(
        f"handler_us={rows_us['whole handler through the middlewares (now)']:.0f} "
        f"bare_us={rows_us['bare floor handler: web.json_response(data)']:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
