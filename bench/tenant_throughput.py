"""Provisioning throughput: N NexusTenants created at once until all are Ready.

Nexus (the real controllers in this process) against the floor: a bare client making the
same API writes per tenant, in the same order and staging, with no framework, no cache and
no workqueue. Each tenant is provisioned from its create's answer as soon as it exists, by
as many sequences as Nexus has workers: the finalizer (a guarded JSON patch), status
Provisioning, the namespace, then the six objects of its fence at once (ServiceAccount,
three NetworkPolicies, ResourceQuota, LimitRange), then the node Deployment and Service at
once, status Ready; its two Events are sent in the background, as Nexus's event recorder
does. Each run gets a fresh control plane; the sides alternate (floor, Nexus, floor, Nexus
by default) and the API server's own request counts by verb and resource
(``apiserver_request_total``) are compared, so that a difference in the writes shows.
Target: Nexus <= 1.05x the floor in both pairs.

    .venv/bin/python -m bench.tenant_throughput [--n 1000] [--workers 16] [--pairs 2]
        [--profile DIR]   # py-spy on the Nexus runs: DIR/nexus-<i>.txt (self time by function)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import REGISTRY

from bench.common import bounded, rss_bytes, table
from nexus.app import build_manager, controller_settings
from nexus.controllers import desired, fence
from nexus.controllers.status import phase_status
from nexus.domain.resources import TENANT_FINALIZER, TENANTS
from nexus.node import in_cluster_endpoint
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.objects import now_micro, now_rfc3339, set_condition
from nexus.runtime.resource import DEPLOYMENTS, EVENTS, NAMESPACES, SERVICES, Resource
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


def bench_settings(workers: int) -> ManagerSettings:
    return ManagerSettings(
        metrics_bind_address="0",
        health_probe_bind_address="0",
        webhook_bind_address="127.0.0.1:0",
        node_endpoint="http://127.0.0.1:9",
        wait_for_node=False,  # no kubelet: Ready when the objects exist
        node_image="astromesh/node:bench",
        tenant_concurrency=workers,
        log_level="warning",
    )


def _status(t: dict[str, Any], phase: str, reason: str, message: str) -> dict[str, Any]:
    """A status body of the size Nexus writes (phase, message, Ready condition, ...)."""
    status = phase_status(
        t, phase=phase, ready=phase == "Ready", reason=reason, message=message, now=now_rfc3339()
    )
    if phase == "Ready":
        name = t["metadata"]["name"]
        status["conditions"] = set_condition(
            status["conditions"],
            "NodeAvailable",
            "False",
            reason="NodeStarting",
            message="waiting for the astromesh-node pod to become ready",
            observed_generation=t["metadata"].get("generation"),
        )
        status.update(namespace=name, nodeEndpoint=in_cluster_endpoint(name))
    status["agentCount"] = 0
    return status


async def floor(client: Client, n: int, workers: int) -> float:
    """The same writes as the reconciler, in the same stages, straight-line, per tenant.

    Tenants are provisioned as they are created, by ``workers`` sequences, as the controller
    does (its workers start on the first tenants while the rest are still being created); the
    floor has each tenant from its create's answer, so it reads nothing.
    """
    settings = controller_settings(bench_settings(workers)).tenant
    events: set[asyncio.Task[None]] = set()
    created: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def event(t: dict[str, Any], reason: str) -> None:
        task = asyncio.create_task(_event(client, t, reason))
        events.add(task)
        task.add_done_callback(events.discard)

    async def stage(objs: list[tuple[Resource, dict[str, Any]]]) -> None:
        await asyncio.gather(*(client.create(res, obj) for res, obj in objs))

    async def provision(t: dict[str, Any]) -> None:
        meta = t["metadata"]
        name = meta["name"]
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "add", "path": "/metadata/finalizers", "value": [TENANT_FINALIZER]},
        ]
        t = await client.patch(TENANTS, name, ops, SYSTEM, patch_type="json")
        t = await client.patch_status(
            TENANTS, name, _status(t, "Provisioning", "Provisioning", "creating"), SYSTEM
        )
        event(t, "Provisioning")
        await stage([(NAMESPACES, desired.namespace(t))])
        await stage(fence.children(t, settings.fence))
        node = desired.node_deployment(
            t, settings.node_image, run_as_user=settings.node_run_as_user
        )
        await stage([(DEPLOYMENTS, node), (SERVICES, desired.node_service(t))])
        t = await client.patch_status(
            TENANTS, name, _status(t, "Ready", "Provisioned", "in place"), SYSTEM
        )
        event(t, "Ready")

    async def worker() -> None:
        while (t := await created.get()) is not None:
            await provision(t)

    async def create(i: int) -> None:
        created.put_nowait(await client.create(TENANTS, tenant(i)))

    start = time.perf_counter()
    workers_done = asyncio.gather(*(worker() for _ in range(workers)))
    await bounded(range(n), create, CREATE_CONCURRENCY)
    for _ in range(workers):
        created.put_nowait(None)
    await workers_done
    while events:
        await asyncio.gather(*list(events))
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


class ReadyCount:
    """Counts Ready tenants as the informer sees them (a poll over 1000 objects five times a
    second would cost this process, which runs the manager, more than the manager's work)."""

    name = "bench-ready-count"

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self.changed = asyncio.Event()

    def _see(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if (obj.get("status") or {}).get("phase") == "Ready":
            self.ready.add(name)
        else:
            self.ready.discard(name)
        self.changed.set()

    def on_add(self, obj: dict[str, Any], initial: bool) -> None:
        self._see(obj)

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self._see(new)

    def on_delete(self, obj: dict[str, Any], final_state_unknown: bool) -> None:
        self.ready.discard(obj["metadata"]["name"])

    async def wait(self, n: int) -> None:
        while len(self.ready) < n:
            self.changed.clear()
            await self.changed.wait()


def tenant_reconciles() -> float:
    """This process's tenant reconciles so far (every result)."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if (
                sample.name == "controller_runtime_reconcile_total"
                and sample.labels.get("controller") == "nexustenant"
            ):
                total += sample.value
    return total


#: After the last tenant is Ready, how long echoes of the last writes may still wake one (s).
SETTLE = 2.0


async def nexus(client: Client, api: Any, n: int, workers: int) -> tuple[float, int, float]:
    """Seconds to all Ready, RSS, and tenant reconciles per tenant (after a short settle)."""
    mgr = build_manager(api, bench_settings(workers))
    await mgr.start()
    informer = mgr.cache.informer_for(TENANTS, namespace=SYSTEM)
    ready = ReadyCount()
    informer.add_event_handler(ready)
    before = tenant_reconciles()
    try:
        start = time.perf_counter()
        await create_all(client, n)
        await ready.wait(n)
        took = time.perf_counter() - start
        await asyncio.sleep(SETTLE)
        return took, rss_bytes(), (tenant_reconciles() - before) / n
    finally:
        await mgr.stop()


_REQUESTS = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


async def api_requests(env: Environment) -> collections.Counter[tuple[str, str]]:
    """The API server's own count of requests, by (verb, resource[/subresource])."""
    headers = {"Authorization": f"Bearer {env.token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{env.host}/metrics", headers=headers, ssl=False) as r,
    ):
        text = await r.text()
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in text.splitlines():
        if m := _REQUESTS.match(line):
            labels = dict(_LABEL.findall(m.group(1)))
            res = labels.get("resource", "")
            if labels.get("subresource"):
                res += "/" + labels["subresource"]
            counts[labels.get("verb", ""), res] += int(float(m.group(2)))
    return counts


class Profiler:
    """py-spy sampling this process during a run (when installed and ``--profile`` given)."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.proc: asyncio.subprocess.Process | None = None
        self.raw: Path | None = None

    async def start(self, label: str) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if self.out is None or not Path(exe).exists():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.raw = self.out / f"{label}.raw"
        self.proc = await asyncio.create_subprocess_exec(
            exe, "record", "--format", "raw", "--rate", "50", "--nonblocking",
            "-o", str(self.raw), "--pid", str(os.getpid()),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def stop(self) -> None:
        if self.proc is None or self.raw is None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        await self.proc.wait()
        self.proc = None
        if self.raw.exists():
            self.raw.with_suffix(".txt").write_text(summarise_profile(self.raw))


def summarise_profile(raw: Path, top: int = 40) -> str:
    """Self and total samples by function, from py-spy's collapsed stacks."""
    self_time: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples += int(count)
        self_time[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    lines = [f"samples: {samples}", "", "self %  function"]
    lines += [f"{100 * c / samples:5.1f}  {f}" for f, c in self_time.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * c / samples:5.1f}  {f}" for f, c in total.most_common(top)]
    return "\n".join(lines) + "\n"


async def run_once(
    kind: str, n: int, workers: int, profiler: Profiler | None = None
) -> tuple[float, int, float, collections.Counter[tuple[str, str]], float]:
    """(seconds, RSS, CPU seconds of this process, API requests, tenant reconciles per tenant)
    on a fresh control plane."""
    async with Environment(crd_paths=["config/crd/bases"]) as env, await env.api_client() as api:
        client = Client(api)
        try:
            await client.create(NAMESPACES, {"metadata": {"name": SYSTEM}})
            before = await api_requests(env)
            cpu0 = time.process_time()
            passes = 0.0
            if kind == "floor":
                took, rss = await floor(client, n, workers), rss_bytes()
            else:
                if profiler is not None:
                    await profiler.start(f"nexus-{n}")
                try:
                    took, rss, passes = await nexus(client, api, n, workers)
                finally:
                    if profiler is not None:
                        await profiler.stop()
            cpu = time.process_time() - cpu0
            after = await api_requests(env)
            return took, rss, cpu, after - before, passes
        finally:
            await client.close()


def writes_table(counts: dict[str, collections.Counter[tuple[str, str]]], n: int) -> list[str]:
    keys = sorted({k for c in counts.values() for k in c})
    sides = list(counts)
    lines = [f"{'verb resource':44} " + " ".join(f"{s:>10}" for s in sides)]
    for verb, res in keys:
        values = [counts[s].get((verb, res), 0) for s in sides]
        if max(values) < n // 10:  # discovery, probes and other incidentals
            continue
        lines.append(f"{verb + ' ' + res:44} " + " ".join(f"{v:>10}" for v in values))
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16, help="parallel sequences, both sides")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    args = parser.parse_args()
    from nexus.runtime.logging import configure_logging

    configure_logging(json=False, level="warning")
    profiler = Profiler(args.profile)
    rows = [("tenants", str(args.n)), ("parallel sequences / workers", str(args.workers))]
    ratios = []
    counts: dict[str, collections.Counter[tuple[str, str]]] = {}
    for pair in range(args.pairs):
        load = os.getloadavg()[0]
        floor_s, _, floor_cpu, floor_req, _ = await run_once("floor", args.n, args.workers)
        nexus_s, rss, nexus_cpu, nexus_req, passes = await run_once(
            "nexus", args.n, args.workers, profiler if pair == 0 else None
        )
        counts.setdefault("floor", floor_req)
        counts.setdefault("nexus", nexus_req)
        ratios.append(nexus_s / floor_s)
        rows += [
            (f"pair {pair + 1}: floor", f"{floor_s:.2f} s  ({args.n / floor_s:.0f}/s)"),
            (f"pair {pair + 1}: nexus", f"{nexus_s:.2f} s  ({args.n / nexus_s:.0f}/s)"),
            (f"pair {pair + 1}: nexus / floor", f"{nexus_s / floor_s:.3f}"),
            (
                f"pair {pair + 1}: python CPU floor / nexus",
                f"{floor_cpu:.1f} s / {nexus_cpu:.1f} s",
            ),
            (f"pair {pair + 1}: tenant reconciles per tenant", f"{passes:.2f}"),
            (f"pair {pair + 1}: load average at start", f"{load:.1f}"),
        ]
    rows.append(("process RSS after (nexus run)", f"{rss / 2**20:.0f} MiB"))
    print(table(rows))
    print()
    print("API server requests by verb and resource (first pair):")
    print("\n".join(writes_table(counts, args.n)))
    print(
        " ".join(f"ratio{i + 1}={r:.3f}" for i, r in enumerate(ratios))
        + f" ratio={max(ratios):.3f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
