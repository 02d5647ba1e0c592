"""The scale curve: 1k, 2k, 5k tenants (``--points``), each on fresh control planes.

For each point: the floor (the bare client of ``tenant_throughput``) provisions N tenants on a
control plane of its own; then, on another, a real ``nexus manager`` process is started, N
tenants are created at once, and it is timed until all are Ready (seen by a watch in this
process, which runs during the floor too, so that both sides pay for it). Then, with the tenants
Ready: its RSS, its API writes over ``--window`` seconds (a full resync: 0 expected) and the
p50/p99 of its tenant reconciles (its own ``controller_runtime_reconcile_time_seconds``,
provisioning included). With ``--restart`` (first point only): the manager is stopped and
started again, and timed from process start to ``/readyz`` and to the first reconcile of a
tenant created right then, while the N known tenants wait in the low-priority queue.

Writes ``scale.json``, ``scale.md`` (the table) and ``scale.png`` (matplotlib, the ``bench``
extra) to ``--out``; prints the table, then ``key=value`` figures.

    .venv/bin/python -m bench.scale_curve --points 1000,2000,5000 [--window 70] [--restart]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import memtrace
from bench.common import bounded, table
from bench.steady_state import rss_of, scrape
from bench.tenant_throughput import SYSTEM, floor, tenant
from nexus.domain.resources import TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment, free_port
from nexus.runtime.informer import Informer
from nexus.runtime.resource import NAMESPACES

WORKERS = 16
_BUCKET = re.compile(
    r'^controller_runtime_reconcile_time_seconds_bucket\{controller="nexustenant",'
    r'le="([^"]+)"\} (\S+)$'
)


class Manager:
    """``nexus manager`` as a subprocess."""

    def __init__(self, env: Environment, log: Path) -> None:
        self.env = env
        self.log = log
        self.metrics_port = free_port()
        self.probe_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    async def start(self) -> None:
        log = self.log.open("ab")
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *memtrace.wrap(["nexus.cli", "manager"], self.log.with_suffix(".tracemalloc.txt")),
            f"--kubeconfig={self.env.kubeconfig_path}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
            "--webhook-bind-address=127.0.0.1:0",
            "--api-bind-address=0",
            "--node-endpoint=http://127.0.0.1:9",
            "--no-wait-for-node",
            "--node-image=astromesh/node:bench",
            f"--tenant-concurrency={WORKERS}",
            "--log-level=warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
        log.close()

    async def ready(self, timeout: float = 300.0) -> float:
        """Seconds from process start to ``/readyz`` 200."""
        url = f"http://127.0.0.1:{self.probe_port}/readyz"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                self.check()
                try:
                    async with s.get(url) as r:
                        if r.status == 200:
                            return time.monotonic() - self.started_at
                except (aiohttp.ClientError, OSError):
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("the manager did not become ready")

    def check(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise SystemExit(f"the manager exited with {self.proc.returncode}; see {self.log}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        self.proc = None

    async def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return await r.text()


def quantile(text: str, q: float) -> float:
    """``histogram_quantile`` of the tenant reconcile histogram (linear within a bucket)."""
    buckets = sorted(
        (float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
        for line in text.splitlines()
        if (m := _BUCKET.match(line))
    )
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def phase(t: dict[str, Any]) -> str | None:
    phase_: str | None = (t.get("status") or {}).get("phase")
    return phase_


async def wait_ready(inf: Informer, n: int, mgr: Manager, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for t in inf.list() if phase(t) == "Ready") < n:
        mgr.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {n} tenants Ready after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def floor_point(n: int) -> float:
    async with Environment(crd_paths=["config/crd/bases"]) as env, await env.api_client() as api:
        client = Client(api)
        # The same watch of the tenants as on Nexus's side (where it tells when all are
        # Ready), so that both sides pay for it on this machine's two cores.
        tenants = Informer(client, TENANTS, namespace=SYSTEM)
        tenants.start()
        try:
            await client.create(NAMESPACES, {"metadata": {"name": SYSTEM}})
            await tenants.wait_for_sync()
            return await floor(client, n, WORKERS)
        finally:
            await tenants.stop()
            await client.close()


async def nexus_point(n: int, window: float, restart: bool, log: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Environment(crd_paths=["config/crd/bases"]) as env, await env.api_client() as api:
        client = Client(api)
        await client.create(NAMESPACES, {"metadata": {"name": SYSTEM}})
        tenants = Informer(client, TENANTS, namespace=SYSTEM)
        tenants.start()
        mgr = Manager(env, log)
        try:
            await tenants.wait_for_sync()
            await mgr.start()
            await mgr.ready()
            start = time.monotonic()

            async def create(i: int) -> None:
                await client.create(TENANTS, tenant(i))

            await bounded(range(n), create, 64)
            await wait_ready(tenants, n, mgr, timeout=max(600.0, n * 0.5))
            out["ready_s"] = time.monotonic() - start
            text = await mgr.metrics()
            out["reconcile_p50_ms"] = quantile(text, 0.5) * 1e3
            out["reconcile_p99_ms"] = quantile(text, 0.99) * 1e3
            await asyncio.sleep(5)  # the last events and status writes
            w0, r0 = await scrape(mgr.metrics_port)
            await asyncio.sleep(window)
            w1, r1 = await scrape(mgr.metrics_port)
            assert mgr.proc is not None
            out["rss_mb"] = rss_of(mgr.proc.pid) / 1e6
            out["idle_writes"] = w1 - w0
            out["idle_reconciles"] = r1 - r0
            if restart:
                await mgr.stop()
                await mgr.start()
                out["restart_ready_s"] = await mgr.ready()
                t0 = time.monotonic()
                await client.create(TENANTS, tenant(n))
                await wait_ready(tenants, n + 1, mgr, timeout=300)
                out["restart_new_tenant_ready_s"] = time.monotonic() - t0
                out["restart_started_to_new_ready_s"] = time.monotonic() - mgr.started_at
        finally:
            await mgr.stop()
            await tenants.stop()
            await client.close()
    return out


def plot(points: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ns = [p["n"] for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(ns, [p["ready_s"] for p in points], "o-", label="nexus")
    axes[0].plot(ns, [p["floor_s"] for p in points], "s--", label="floor (bare client)")
    axes[0].set(title="time to all Ready", xlabel="tenants", ylabel="s")
    axes[0].legend()
    axes[1].plot(ns, [p["rss_mb"] for p in points], "o-")
    axes[1].set(title="manager RSS after convergence", xlabel="tenants", ylabel="MB")
    axes[2].plot(ns, [p["reconcile_p99_ms"] for p in points], "o-", label="p99")
    axes[2].plot(ns, [p["reconcile_p50_ms"] for p in points], "s--", label="p50")
    axes[2].set(title="tenant reconcile time", xlabel="tenants", ylabel="ms")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"Nexus scale curve ({os.cpu_count()} CPUs, shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def markdown(points: list[dict[str, Any]]) -> str:
    lines = [
        "| tenants | all Ready: nexus / floor | ratio | RSS | RSS per tenant (margin) | "
        "idle writes | reconcile p50 / p99 | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    prev: dict[str, Any] | None = None
    for p in points:
        margin = (
            f"{(p['rss_mb'] - prev['rss_mb']) * 1e3 / (p['n'] - prev['n']):.1f} KB" if prev else "—"
        )
        lines.append(
            f"| {p['n']:,} | {p['ready_s']:.1f} s / {p['floor_s']:.1f} s | "
            f"{p['ready_s'] / p['floor_s']:.3f} | {p['rss_mb']:.0f} MB | {margin} | "
            f"{p['idle_writes']:.0f} | {p['reconcile_p50_ms']:.1f} / "
            f"{p['reconcile_p99_ms']:.1f} ms | {p['load']:.1f} |"
        )
        prev = p
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", default="1000,2000,5000")
    parser.add_argument("--window", type=float, default=70.0)
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "nexus-scale")
    args = parser.parse_args()
    from nexus.runtime.logging import configure_logging

    configure_logging(json=False, level="warning")
    args.out.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    for i, n in enumerate(int(x) for x in args.points.split(",")):
        load = os.getloadavg()[0]
        floor_s = await floor_point(n)
        result = await nexus_point(
            n, args.window, args.restart and i == 0, args.out / f"manager-{n}.log"
        )
        points.append({"n": n, "floor_s": floor_s, "load": load, **result})
        (args.out / "scale.json").write_text(json.dumps(points, indent=1))
        print(f"point {n}: {json.dumps(points[-1])}", flush=True)
    md = markdown(points)
    (args.out / "scale.md").write_text(md + "\n")
    drawn = plot(points, args.out / "scale.png")
    rows = [
        (f"{p['n']} tenants", json.dumps({k: round(v, 3) for k, v in p.items()})) for p in points
    ]
    print(table(rows))
    print(md)
    print(f"plot: {args.out / 'scale.png' if drawn else 'matplotlib missing'}")
    last, first = points[-1], points[0]
    margin = (
        (last["rss_mb"] - first["rss_mb"]) * 1e3 / (last["n"] - first["n"])
        if len(points) > 1
        else float("nan")
    )
    print(
        f"ratio_max={max(p['ready_s'] / p['floor_s'] for p in points):.3f} "
        f"rss_kb_per_tenant={margin:.1f} "
        f"idle_writes_max={max(p['idle_writes'] for p in points):.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
