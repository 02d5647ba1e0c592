"""Steady state: with N Ready tenants, a real `nexus manager` process writes nothing.

Starts a local control plane, creates N tenants, runs `nexus manager` as a subprocess until all
are Ready, then counts its API write requests (from its own `rest_client_requests_total`) over
a window that spans a full resync (default 70 s), and reads its RSS. Targets: 0 writes,
RSS <= 150 MB (kopf used 221 MB for the same work).

    .venv/bin/python -m bench.steady_state [--n 1000] [--window 70]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import memtrace
from bench.common import bounded, table
from bench.tenant_throughput import SYSTEM, tenant
from nexus.domain.resources import TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment, free_port
from nexus.runtime.resource import NAMESPACES

LOG = Path(tempfile.gettempdir()) / "nexus-bench-steady-state.log"

_WRITE = re.compile(
    r'^rest_client_requests_total\{[^}]*method="(POST|PUT|PATCH|DELETE)"[^}]*\} (\S+)$'
)
_RECONCILES = re.compile(
    r'^controller_runtime_reconcile_total\{controller="nexustenant"[^}]*\} (\S+)$'
)


async def scrape(port: int) -> tuple[float, float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    writes = sum(float(m.group(2)) for line in text.splitlines() if (m := _WRITE.match(line)))
    recs = sum(float(m.group(1)) for line in text.splitlines() if (m := _RECONCILES.match(line)))
    return writes, recs


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--window", type=float, default=70.0)
    args = parser.parse_args()
    async with Environment(crd_paths=["config/crd/bases"]) as env, await env.api_client() as api:
        client = Client(api)
        await client.create(NAMESPACES, {"metadata": {"name": SYSTEM}})

        async def create(i: int) -> None:
            await client.create(TENANTS, tenant(i))

        await bounded(range(args.n), create, 64)
        metrics_port = free_port()
        log = LOG.open("wb")
        proc = await asyncio.create_subprocess_exec(
            *memtrace.wrap(["nexus.cli", "manager"], LOG.with_suffix(".tracemalloc.txt")),
            f"--kubeconfig={env.kubeconfig_path}",
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            "--health-probe-bind-address=127.0.0.1:0",
            "--webhook-bind-address=127.0.0.1:0",
            "--api-bind-address=0",
            "--node-endpoint=http://127.0.0.1:9",
            "--no-wait-for-node",
            "--node-image=astromesh/node:bench",
            "--log-level=warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            env={**os.environ},
        )
        log.close()
        try:
            start = time.monotonic()
            while True:
                items, _ = await client.list_all(TENANTS, SYSTEM)
                ready = sum(1 for t in items if (t.get("status") or {}).get("phase") == "Ready")
                if ready >= args.n:
                    break
                if proc.returncode is not None:
                    raise SystemExit(f"the manager exited with {proc.returncode}; see {LOG}")
                await asyncio.sleep(0.5)
            provisioned = time.monotonic() - start
            await asyncio.sleep(5)  # events and last status writes settle
            w0, r0 = await scrape(metrics_port)
            await asyncio.sleep(args.window)
            w1, r1 = await scrape(metrics_port)
            rss = rss_of(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
            await client.close()
    print(
        table(
            [
                ("tenants", str(args.n)),
                ("provisioned in", f"{provisioned:.1f} s"),
                (f"reconciles in {args.window:.0f} s", f"{r1 - r0:.0f}"),
                (f"API writes in {args.window:.0f} s", f"{w1 - w0:.0f}"),
                ("manager RSS", f"{rss / 1e6:.0f} MB"),
            ]
        )
    )
    print(f"writes={w1 - w0:.0f} rss_mb={rss / 1e6:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
