"""Informer cache memory: RSS growth per cached ~1 KB ConfigMap (target <= 4 KB/object).

Creates N ConfigMaps on a fresh local control plane, then, in a child process, measures RSS
before and after an informer has synced them, with managedFields stripped (the default) and
kept (no transform), side by side.

``--kinds``: what each kind a tenant brings costs in the manager's cache, per object. One
tenant is provisioned by the real controllers on a control plane with
kube-controller-manager (so that its Deployment has the status a cluster gives it); its
objects, as served, are copied for ``--tenants`` tenants (names and uids changed) and decoded
and stored as the cache did before (``json``, ``managedFields`` dropped) and does now
(``orjson`` and the transforms of ``nexus.controllers.cachetrim``, one shared string pool).
Bytes are Python allocations (tracemalloc) per object, all tenants' objects alive together.

    .venv/bin/python -m bench.cache_memory [--n 10000]
    .venv/bin/python -m bench.cache_memory --kinds [--tenants 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import sys
import time
import tracemalloc
import uuid
from typing import Any

import orjson

from bench.common import bounded, table
from nexus.controllers import cachetrim
from nexus.domain.resources import AGENTS, TENANT_LABEL, TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import CONFIGMAPS, NAMESPACES, Resource
from nexus.runtime.transform import StringPool, shared, strip_managed_fields

CHILD = r"""
import asyncio, json, sys
from kubernetes_asyncio import client as k8s
from bench.common import settle
from nexus.runtime.client import Client
from nexus.runtime.informer import Informer
from nexus.runtime.resource import CONFIGMAPS

async def main(host, token, strip):
    cfg = k8s.Configuration(); cfg.host = host; cfg.verify_ssl = False
    cfg.api_key = {"BearerToken": token}; cfg.api_key_prefix = {"BearerToken": "Bearer"}
    async with k8s.ApiClient(cfg) as api:
        client = Client(api)
        await client.list(CONFIGMAPS, "bench", limit=1)  # warm the connection and imports
        before = settle()
        kw = {} if strip else {"transform": None}
        inf = Informer(client, CONFIGMAPS, namespace="bench", **kw)
        inf.start()
        await inf.wait_for_sync()
        after = settle()
        n = len(inf)
        await inf.stop()
        print(json.dumps({"objects": n, "bytes": after - before}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "1"))
"""


async def served_objects() -> dict[Resource, list[dict[str, Any]]]:
    """The objects of one tenant provisioned by the real controllers, as the server serves them."""
    from bench.tenant_throughput import SYSTEM, bench_settings, tenant
    from nexus.app import build_manager

    kinds = [TENANTS, AGENTS, *cachetrim.child_masks(_settings()).keys()]
    async with (
        Environment(crd_paths=["config/crd/bases"], with_controller_manager=True) as env,
        await env.api_client() as api,
    ):
        client = Client(api)
        await client.create(NAMESPACES, {"metadata": {"name": SYSTEM}})
        mgr = build_manager(api, bench_settings(4))
        await mgr.start()
        try:
            t = await client.create(TENANTS, tenant(1))
            name = t["metadata"]["name"]
            deadline = time.monotonic() + 120
            while (await client.get(TENANTS, name, SYSTEM)).get("status", {}).get("phase") != (
                "Ready"
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("the sample tenant did not become Ready")
                await asyncio.sleep(0.2)
            await client.create(AGENTS, _agent(name))
            await asyncio.sleep(5)  # Deployment status, ReplicaSet, agent status
            out: dict[Resource, list[dict[str, Any]]] = {}
            for res in kinds:
                items, _ = await client.list_all(res, None if res is NAMESPACES else name)
                if res is NAMESPACES:
                    items = [i for i in items if i["metadata"]["name"] == name]
                elif res is TENANTS:
                    items, _ = await client.list_all(res, SYSTEM)
                # Only what the manager caches: its own children (label-scoped informers).
                out[res] = [
                    i
                    for i in items
                    if res in (TENANTS, AGENTS)
                    or TENANT_LABEL in (i["metadata"].get("labels") or {})
                ]
            return out
        finally:
            await mgr.stop()
            await client.close()


def _settings() -> Any:
    from bench.tenant_throughput import bench_settings
    from nexus.app import controller_settings

    return controller_settings(bench_settings(4)).tenant


def _agent(ns: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "agent-1", "namespace": ns},
        "spec": {
            "agentSpec": {
                "apiVersion": "astromesh/v1",
                "kind": "Agent",
                "metadata": {"name": "agent-1", "version": "1.0.0"},
                "spec": {
                    "identity": {"display_name": "Agent 1"},
                    "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
                    "orchestration": {"pattern": "react"},
                },
            }
        },
    }


_UID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _copies(obj: dict[str, Any], n: int, name: str) -> list[bytes]:
    """``obj`` as served for ``n`` tenants: their names, new uids and resourceVersions."""
    raw = json.dumps(obj).encode()
    out = []
    for i in range(n):
        b = raw.replace(name.encode(), f"tenant-{90000 + i}".encode())
        b = _UID.sub(lambda _m: str(uuid.uuid4()).encode(), b)
        b = b.replace(b'"resourceVersion": "', f'"resourceVersion": "{i}'.encode())
        out.append(b)
    return out


def _measure(raws: dict[Resource, list[list[bytes]]], decode: Any) -> dict[Resource, float]:
    """Bytes held by the objects of each kind (all copies), every kind of every tenant alive
    at once, as a cache holds them."""
    total: dict[Resource, float] = {}
    keep: list[Any] = []
    gc.collect()
    tracemalloc.start()
    for res, copies in raws.items():
        before = tracemalloc.get_traced_memory()[0]
        for variants in copies:
            keep.extend(decode(res, b) for b in variants)
        total[res] = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del keep
    return total


async def kinds(n_tenants: int) -> None:
    objects = await served_objects()
    name = objects[TENANTS][0]["metadata"]["name"]
    raws = {res: [_copies(o, n_tenants, name) for o in objs] for res, objs in objects.items()}
    pool = StringPool()
    now = cachetrim.transforms(_settings(), pool)
    default = shared(pool)

    def before(res: Resource, b: bytes) -> Any:
        return strip_managed_fields(json.loads(b))

    def after(res: Resource, b: bytes) -> Any:
        obj = orjson.loads(b)
        if res is NAMESPACES:  # watched metadata-only: the server sends metadata alone
            obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": obj["metadata"]}
        return now.get(res, default)(obj)

    was = _measure(raws, before)
    pool_before = len(pool)
    now_b = _measure(raws, after)
    rows = [("tenants (copies of each object)", str(n_tenants))]
    total_was = total_now = 0.0
    for res, objs in objects.items():
        count = len(objs)
        served = sum(len(json.dumps(o)) for o in objs) / max(count, 1)
        w = was[res] / max(count, 1) / n_tenants
        x = now_b[res] / max(count, 1) / n_tenants
        total_was += w * count
        total_now += x * count
        rows.append(
            (
                f"{res.kind} x{count}",
                f"served {served:6.0f} B   cached before {w:6.0f} B   now {x:6.0f} B"
                f"   ({x / w if w else 0:.2f})",
            )
        )
    rows.append(
        ("per tenant (all its objects)", f"before {total_was:.0f} B   now {total_now:.0f} B")
    )
    rows.append(("string pool", f"{len(pool)} strings ({pool_before} before the second pass)"))
    print(table(rows))
    print(f"tenant_bytes_before={total_was:.0f} tenant_bytes_now={total_now:.0f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--kinds", action="store_true", help="per kind of a tenant's objects")
    parser.add_argument("--tenants", type=int, default=500)
    args = parser.parse_args()
    if args.kinds:
        await kinds(args.tenants)
        return
    payload = "x" * 900  # with metadata, about 1 KB per object as served
    async with Environment() as env, await env.api_client() as api:
        client = Client(api)
        await client.create(NAMESPACES, {"metadata": {"name": "bench"}})

        async def create(i: int) -> None:
            await client.create(
                CONFIGMAPS,
                {"metadata": {"name": f"cm-{i:06}", "namespace": "bench"}, "data": {"v": payload}},
            )

        await bounded(range(args.n), create, concurrency=64)
        sample = await client.get(CONFIGMAPS, "cm-000000", "bench")
        served = len(json.dumps(sample))
        results = {}
        for strip in (True, False):
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                env.host,
                env.token,
                "1" if strip else "0",
                stdout=asyncio.subprocess.PIPE,
            )
            stdout, _ = await child.communicate()
            if child.returncode != 0:
                raise SystemExit(f"measuring child failed ({child.returncode})")
            results[strip] = json.loads(stdout.decode().strip().splitlines()[-1])
    per = {k: v["bytes"] / v["objects"] for k, v in results.items()}
    print(
        table(
            [
                ("objects", str(results[True]["objects"])),
                ("served JSON per object", f"{served} B"),
                ("RSS per object, managedFields stripped", f"{per[True]:.0f} B"),
                ("RSS per object, managedFields kept", f"{per[False]:.0f} B"),
                ("stripped / kept", f"{per[True] / per[False]:.2f}"),
            ]
        )
    )
    print(f"bytes_per_object={per[True]:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
