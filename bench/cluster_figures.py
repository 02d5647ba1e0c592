"""Figures of Nexus on the real single-node cluster of ``make cluster-up``.

* ``make cluster-up`` wall time, warm (binaries, base image and image layers cached) and, with
  ``--cold``, cold (every cache of the cluster pointed at an empty folder: the Kubernetes
  binaries are compiled, the base image bootstrapped, the images built);
* the manager pod's RSS (VmRSS of its process, read in the pod), idle and after the tenants;
* for N tenants created one after another through the REST API: created -> its node pod
  Ready, and created -> the tenant ``Ready`` as the API reports it; p50 / p99 / max.

Benchmarks, not tests: nothing here asserts a time. Leaves the cluster as it found it (up or
down), except with ``--cold``, which ends with the cluster down and the temporary caches gone.

    .venv/bin/python -m bench.cluster_figures [--tenants 20] [--warm] [--cold] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import table

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("NEXUS_CLUSTER_DIR", "/var/lib/nexus-cluster"))
CLUSTER_SH = str(ROOT / "hack" / "cluster.sh")
NODE_SELECTOR = "app.kubernetes.io/name=astromesh-node"
POLL = 0.1
TIMEOUT = 300.0


def is_up() -> bool:
    return (STATE / "up").exists()


def timed_up(env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "cluster-up"],
        env={**os.environ, **(env or {})}, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.monotonic() - t0


def down(env: dict[str, str] | None = None) -> None:
    subprocess.run([CLUSTER_SH, "down"], env={**os.environ, **(env or {})}, check=True)


class Kube:
    """Just enough of the Kubernetes REST API, with the kubeconfig cluster-up wrote."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        cfg = yaml.safe_load((STATE / "kubeconfig").read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self.ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.headers = {"Authorization": f"Bearer {cfg['users'][0]['user']['token']}"}
        self.s = session

    async def get(self, path: str, **params: str) -> Any:
        async with self.s.get(
            self.server + path, params=params, headers=self.headers, ssl=self.ssl
        ) as r:
            r.raise_for_status()
            return await r.json()


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")


def manager_rss_mib() -> float:
    kubectl = (
        Path(
            subprocess.run(
                [str(ROOT / "hack" / "setup-envtest.sh")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        / "kubectl"
    )
    status = subprocess.run(
        [str(kubectl), "--kubeconfig", str(STATE / "kubeconfig"), "-n", "nexus-system", "exec",
         "deploy/nexus-controller-manager", "--", "cat", "/proc/1/status"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib / 1024


async def tenant_latencies(n: int) -> list[tuple[float, float]]:
    """(created -> node pod Ready, created -> tenant Ready) for n tenants, one at a time."""
    env = dict(line.split("=", 1) for line in (STATE / "dev-account.env").read_text().splitlines())
    url = env["NEXUS_URL"]
    out: list[tuple[float, float]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        kube = Kube(s)
        email, password = f"bench-{secrets.token_hex(4)}@example.com", "correct-horse-battery"
        await s.post(f"{url}/auth/register", json={"email": email, "password": password,
                                                   "displayName": "bench"})  # fmt: skip
        async with s.post(f"{url}/auth/login", json={"email": email, "password": password}) as r:
            auth = {"Authorization": f"Bearer {(await r.json())['accessToken']}"}
        for i in range(n):
            t0 = time.monotonic()
            async with s.post(
                f"{url}/api/v1/tenants", headers=auth,
                json={"displayName": f"bench {i}", "nodeProfile": "full"},
            ) as r:  # fmt: skip
                assert r.status == 201, await r.text()
                tenant = await r.json()
            ns = tenant["crName"]
            pod_at = ready_at = None
            while (pod_at is None or ready_at is None) and time.monotonic() - t0 < TIMEOUT:
                if pod_at is None:
                    pods = await kube.get(
                        f"/api/v1/namespaces/{ns}/pods", labelSelector=NODE_SELECTOR
                    )
                    if any(pod_ready(p) for p in pods["items"]):
                        pod_at = time.monotonic() - t0
                if ready_at is None:
                    async with s.get(f"{url}/api/v1/tenants/{tenant['id']}", headers=auth) as r:
                        if (await r.json()).get("phase") == "Ready":
                            ready_at = time.monotonic() - t0
                await asyncio.sleep(POLL)
            if pod_at is None or ready_at is None:
                raise RuntimeError(f"tenant {ns}: node pod {pod_at}, Ready {ready_at} (timeout)")
            out.append((pod_at, ready_at))
            print(f"  tenant {i + 1:2d}: node pod Ready {pod_at:5.1f}s, tenant Ready "
                  f"{ready_at:5.1f}s", file=sys.stderr)  # fmt: skip
            async with s.delete(f"{url}/api/v1/tenants/{tenant['id']}", headers=auth) as r:
                assert r.status == 200, await r.text()
            # Let the deleted namespaces drain, so that the node has room and the next tenant
            # is measured on a node doing nothing else.
            while True:
                pods = await kube.get("/api/v1/pods", labelSelector=NODE_SELECTOR)
                if sum(1 for p in pods["items"] if p["metadata"].get("deletionTimestamp")) == 0:
                    break
                await asyncio.sleep(0.5)
    return out


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--warm", action="store_true", help="time a warm cluster-up (down first)")
    ap.add_argument("--cold", action="store_true", help="time a cold cluster-up (empty caches)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    was_up = is_up()
    cold_env: dict[str, str] | None = None
    try:
        if args.cold:
            if is_up():
                down()
            tmp = tempfile.mkdtemp(prefix="nexus-cold-cache-")
            cold_env = {
                "NEXUS_CLUSTER_CACHE": f"{tmp}/cluster",
                "NEXUS_ENVTEST_CACHE": f"{tmp}/envtest",
            }
            results["cluster_up_cold_s"] = round(timed_up(cold_env), 1)
        if args.warm:
            if is_up():
                down(cold_env)
            results["cluster_up_warm_s"] = round(timed_up(cold_env), 1)
        if not is_up():
            results["cluster_up_warm_s"] = round(timed_up(cold_env), 1)
        results["manager_rss_idle_mib"] = round(manager_rss_mib(), 1)
        if args.tenants:
            lat = asyncio.run(tenant_latencies(args.tenants))
            pods, readys = [p for p, _ in lat], [r for _, r in lat]
            for name, vals in (("node_pod_ready", pods), ("tenant_ready", readys)):
                results[f"{name}_p50_s"] = round(pct(vals, 50), 2)
                results[f"{name}_p99_s"] = round(pct(vals, 99), 2)
                results[f"{name}_max_s"] = round(max(vals), 2)
            results["tenants"] = len(lat)
            results["manager_rss_after_mib"] = round(manager_rss_mib(), 1)
    finally:
        if cold_env is not None:
            down(cold_env)
            shutil.rmtree(Path(cold_env["NEXUS_CLUSTER_CACHE"]).parent, ignore_errors=True)
        elif not was_up and is_up():
            down()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table([(k, str(v)) for k, v in results.items()]))
    # The headline line, as every benchmark prints it last.
    print(" ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
