"""Provisioning throughput: N NexusTenants created at once until all are Ready.

Nexus (the real controllers in this process) against the floor: a bare client doing the same
API writes per tenant (finalizer, status Provisioning, namespace, Deployment, Service, status
Ready, two events) with no framework, no cache and no queue. Each run gets a fresh control
plane. Target: Nexus <= 1.10x the floor.

    .venv/bin/python -m bench.tenant_throughput [--n 1000] [--workers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import bounded, rss_bytes, table
from nexus.app import build_manager
from nexus.controllers import desired
from nexus.domain.resources import TENANT_FINALIZER, TENANTS
from nexus.node import in_cluster_endpoint
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.objects import now_micro
from nexus.runtime.resource import DEPLOYMENTS, EVENTS, NAMESPACES, SERVICES
from nexus.settings import ManagerSettings

SYSTEM = "nexus-system"
CREATE_CONCURRENCY = 64


def tenant(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"tenant-{i:05}", "namespace": SYSTEM},
        "spec": {
            "displayName": f"Tenant {i}",
            "nodeProfile": "full",
            "resourceQuota": {"maxAgents": 10, "cpu": "1", "memory": "1Gi"},
        },
    }


async def create_all(client: Client, n: int) -> None:
    async def one(i: int) -> None:
        await client.create(TENANTS, tenant(i))

    await bounded(range(n), one, CREATE_CONCURRENCY)


async def floor(client: Client, n: int, workers: int) -> float:
    """The same writes as the reconciler, straight-line, per tenant."""

    async def provision(i: int) -> None:
        t = await client.get(TENANTS, f"tenant-{i:05}", SYSTEM)
        meta = t["metadata"]
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "add", "path": "/metadata/finalizers", "value": [TENANT_FINALIZER]},
        ]
        t = await client.patch(TENANTS, meta["name"], ops, SYSTEM, patch_type="json")
        await client.patch_status(TENANTS, meta["name"], {"phase": "Provisioning"}, SYSTEM)
        await _event(client, t, "Provisioning")
        for res, obj in (
            (NAMESPACES, desired.namespace(t)),
            (DEPLOYMENTS, desired.node_deployment(t, "astromesh/node:bench")),
            (SERVICES, desired.node_service(t)),
        ):
            await client.create(res, obj)
        await client.patch_status(
            TENANTS,
            meta["name"],
            {
                "phase": "Ready",
                "namespace": meta["name"],
                "nodeEndpoint": in_cluster_endpoint(meta["name"]),
                "agentCount": 0,
            },
            SYSTEM,
        )
        await _event(client, t, "Ready")

    start = time.perf_counter()
    await create_all(client, n)
    await bounded(range(n), provision, workers)
    return time.perf_counter() - start


async def _event(client: Client, obj: dict[str, Any], reason: str) -> None:
    meta = obj["metadata"]
    await client.create(
        EVENTS,
        {
            "metadata": {"generateName": f"{meta['name']}-", "namespace": SYSTEM},
            "eventTime": now_micro(),
            "reportingController": "bench",
            "reportingInstance": "bench",
            "action": reason,
            "reason": reason,
            "type": "Normal",
            "note": reason,
            "regarding": {"kind": "NexusTenant", "name": meta["name"], "namespace": SYSTEM},
        },
    )


async def nexus(client: Client, api: Any, n: int, workers: int) -> tuple[float, int]:
    settings = ManagerSettings(
        metrics_bind_address="0",
        health_probe_bind_address="0",
        node_endpoint="http://127.0.0.1:9",
        node_image="astromesh/node:bench",
        tenant_concurrency=workers,
        log_level="warning",
    )
    mgr = build_manager(api, settings)
    await mgr.start()
    informer = mgr.cache.informer_for(TENANTS, namespace=SYSTEM)
    try:
        start = time.perf_counter()
        await create_all(client, n)
        while True:
            ready = sum(
                1 for t in informer.list() if (t.get("status") or {}).get("phase") == "Ready"
            )
            if ready >= n:
                break
            await asyncio.sleep(0.2)
        took = time.perf_counter() - start
        return took, rss_bytes()
    finally:
        await mgr.stop()


async def run_once(kind: str, n: int, workers: int) -> tuple[float, int, float]:
    """(seconds, RSS, CPU seconds of this process) for one run on a fresh control plane."""
    async with Environment(crd_paths=["config/crd/bases"]) as env, await env.api_client() as api:
        client = Client(api)
        try:
            await client.create(NAMESPACES, {"metadata": {"name": SYSTEM}})
            cpu0 = time.process_time()
            if kind == "floor":
                took, rss = await floor(client, n, workers), rss_bytes()
            else:
                took, rss = await nexus(client, api, n, workers)
            return took, rss, time.process_time() - cpu0
        finally:
            await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16, help="parallel sequences, both sides")
    args = parser.parse_args()
    from nexus.runtime.logging import configure_logging

    configure_logging(json=False, level="warning")
    floor_s, _, floor_cpu = await run_once("floor", args.n, args.workers)
    nexus_s, rss, nexus_cpu = await run_once("nexus", args.n, args.workers)
    print(
        table(
            [
                ("tenants", str(args.n)),
                ("parallel sequences / workers", str(args.workers)),
                ("floor (bare client)", f"{floor_s:.2f} s  ({args.n / floor_s:.0f}/s)"),
                ("nexus", f"{nexus_s:.2f} s  ({args.n / nexus_s:.0f}/s)"),
                ("nexus / floor", f"{nexus_s / floor_s:.3f}"),
                ("python CPU: floor / nexus", f"{floor_cpu:.1f} s / {nexus_cpu:.1f} s"),
                ("process RSS after (nexus run)", f"{rss / 2**20:.0f} MiB"),
            ]
        )
    )
    print(f"ratio={nexus_s / floor_s:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
