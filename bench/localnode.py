"""The local node agent: cost of one node process, and Deployment create -> pod Ready.

Starts a local control plane (with the controller manager) and a local node agent, then
  * starts one astromesh node process directly and times spawn -> first ``/v1/health`` 200;
  * creates ``--tenants`` node Deployments (the tenant controller's template) one after the
    other, timing create -> pod Ready and create -> Deployment available, with the template's
    probes (period 10 s) and with a 1 s probe period;
  * reports the RSS of every node process.

    .venv/bin/python -m bench.localnode [--tenants 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import table
from nexus.controllers import desired
from nexus.localnode import LocalNodeAgent, LocalNodeConfig
from nexus.localnode.process import CONFIG_DIR_ENV, NodeProcess, astromesh_command
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment, free_port
from nexus.runtime.resource import DEPLOYMENTS, NAMESPACES, PODS

Object = dict[str, Any]


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def first_health(url: str, timeout: float = 60) -> float:
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
        while time.perf_counter() - t0 < timeout:
            try:
                async with s.get(f"{url}/v1/health") as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(url)


async def raw_start(tmp: Path) -> tuple[float, int]:
    """Spawn -> first health answer, and the RSS once it serves."""
    port = free_port()
    (tmp / "config").mkdir(parents=True, exist_ok=True)
    proc = NodeProcess(
        astromesh_command("127.0.0.1", port),
        env={**os.environ, CONFIG_DIR_ENV: str(tmp / "config")},
        cwd=tmp,
        log_path=tmp / "node.log",
    )
    t0 = time.perf_counter()
    pid = await proc.start()
    try:
        await first_health(f"http://127.0.0.1:{port}")
        took = time.perf_counter() - t0
        await asyncio.sleep(1)
        return took, rss_of(pid)
    finally:
        await proc.stop(5)


def ready(pod: Object) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


async def one_tenant(kube: Client, ns: str, period: int | None) -> tuple[float, float]:
    await kube.create(NAMESPACES, {"metadata": {"name": ns}})
    dep = desired.node_deployment({"metadata": {"name": ns, "namespace": "x"}, "spec": {}}, "x")
    if period is not None:
        # Readiness only: a liveness probe this quick kills a node that starts slowly under
        # load (it has no startup probe to wait for), which is not what is measured here.
        c = dep["spec"]["template"]["spec"]["containers"][0]
        c["readinessProbe"] = {**c["readinessProbe"], "periodSeconds": period}
    t0 = time.perf_counter()
    await kube.create(DEPLOYMENTS, dep, ns)
    pod_ready = available = 0.0
    while not available:
        if not pod_ready:
            items, _ = await kube.list_all(PODS, ns)
            if items and ready(items[0]):
                pod_ready = time.perf_counter() - t0
        if pod_ready:
            d = await kube.get(DEPLOYMENTS, dep["metadata"]["name"], ns)
            if (d.get("status") or {}).get("availableReplicas") == 1:
                available = time.perf_counter() - t0
        await asyncio.sleep(0.05)
    return pod_ready, available


async def main(tenants: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-localnode-") as tmp:
        took, rss = await raw_start(Path(tmp) / "raw")
        headline = {"node_start_s": f"{took:.2f}", "node_rss_mb": f"{rss / 2**20:.0f}"}
        rows = [
            ("node process: spawn -> /v1/health 200", f"{took:.2f} s"),
            ("node process: RSS when serving", f"{rss / 2**20:.0f} MiB"),
        ]
        env = Environment(with_controller_manager=True)
        async with env, await env.api_client() as api:
            kube = Client(api)
            config = LocalNodeConfig(
                address_range="127.0.200.0/24", root=Path(tmp) / "agent", max_pods=4 * tenants
            )
            async with LocalNodeAgent(kube, config) as agent:
                for label, period in (("template probes (10 s)", None), ("readiness every 1 s", 1)):
                    results = [
                        await one_tenant(kube, f"bench-{period or 10}-{i}", period)
                        for i in range(tenants)
                    ]
                    pods = [r[0] for r in results]
                    avail = [r[1] for r in results]
                    key = "ready_template_s" if period is None else "ready_1s_probe_s"
                    headline[key] = f"{statistics.median(pods):.2f}"
                    rows.append(
                        (
                            f"create -> pod Ready, {label}",
                            f"median {statistics.median(pods):.2f} s, max {max(pods):.2f} s",
                        )
                    )
                    rows.append(
                        (
                            f"create -> Deployment available, {label}",
                            f"median {statistics.median(avail):.2f} s, max {max(avail):.2f} s",
                        )
                    )
                rss_all = [rss_of(p.pid) for p in agent.pods() if p.pid]
                rows.append(
                    (
                        f"RSS of {len(rss_all)} node processes",
                        f"median {statistics.median(rss_all) / 2**20:.0f} MiB, "
                        f"total {sum(rss_all) / 2**20:.0f} MiB",
                    )
                )
            await kube.close()
        print(table(rows))
        print(" ".join(f"{k}={v}" for k, v in headline.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=5)
    asyncio.run(main(parser.parse_args().tenants))
