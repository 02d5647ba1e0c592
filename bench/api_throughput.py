"""REST API read throughput: ``GET /api/v1/agents`` with an API key, 100 agents in the tenant.

Nexus (real `nexus manager` subprocesses on a local control plane: dual-auth middleware, key
lookup in the store, tenant resolution, the agent list from the informer cache, pydantic
models) against the floor: a bare aiohttp handler in a subprocess of its own returning the same
JSON (serialised per request, as any handler would). The sides:

* ``bare aiohttp``: the floor;
* ``nexus sqlite``: one manager on a SQLite file;
* ``nexus postgres``: one replica of a pair on a PostgreSQL server started here (Debian's
  package, as in the tests);
* ``nexus postgres x2``: both replicas of that pair, the connections split between them.

All managers share one system namespace and one Lease (``--leader-elect``), so that a single
set of controllers reconciles every tenant; each store has its own tenant, key and agents. The
same aiohttp client drives every side with N concurrent connections for a fixed time each,
alternating the sides for a few rounds (the median round of each side counts). Target:
nexus sqlite / bare >= 0.8. The load generator shares the machine's CPUs with the servers, so
on a 2-core machine two replicas cannot be expected to double one.

    .venv/bin/python -m bench.api_throughput [--agents 100] [--connections 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import bounded, table
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment, free_port
from nexus.runtime.resource import NAMESPACES
from tests.support.postgres import PostgresServer, find_bindir

SYSTEM = "nexus-system"
READY_TIMEOUT = 120.0
LEASE = "nexus-bench-api"


# -- the floor: a bare aiohttp server (run as `python -m bench.api_throughput --bare ...`) -----


def serve_bare(port: int, body_file: str) -> None:
    from aiohttp import web

    data = json.loads(Path(body_file).read_text())

    async def agents(request: web.Request) -> web.Response:
        return web.json_response(data)

    app = web.Application()
    app.router.add_get("/api/v1/agents", agents)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- processes --------------------------------------------------------------------------------


async def wait_http(url: str, proc: asyncio.subprocess.Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: process exited with {proc.returncode}")
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not answering after {timeout}s")


async def start_manager(
    kubeconfig: Path, workdir: Path, max_agents: int, *, database: str, secret: str, tag: str
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    log = (workdir / f"manager-{tag}.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus.cli", "manager",
        f"--kubeconfig={kubeconfig}",
        f"--api-bind-address=127.0.0.1:{port}",
        f"--health-probe-bind-address=127.0.0.1:{free_port()}",
        "--webhook-bind-address=127.0.0.1:0",
        "--metrics-bind-address=0",
        f"--database={database}",
        "--leader-elect",
        f"--leader-election-id={LEASE}",
        "--node-endpoint=http://127.0.0.1:9",
        "--no-wait-for-node",
        "--node-image=astromesh/node:bench",
        # The node is down on purpose; do not let retries compete with the API for the CPU.
        "--error-requeue=3600",
        "--resync-period=3600",
        "--log-level=warning",
        f"--default-max-agents={max_agents}",
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        env={**os.environ, "NEXUS_JWT_SECRET": secret},
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/readyz", proc)
    return proc, url


async def start_bare(body: bytes, workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    body_file = workdir / "agents.json"
    body_file.write_bytes(body)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.api_throughput", "--bare", str(port), str(body_file),
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/api/v1/agents", proc)
    return proc, url


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- setup through the API --------------------------------------------------------------------


async def populate(url: str, n_agents: int, email: str) -> str:
    """A user, a Ready tenant, an API key and ``n_agents`` agents; returns the raw key."""
    async with aiohttp.ClientSession() as s:

        async def call(method: str, path: str, **kw: Any) -> Any:
            async with s.request(method, url + path, **kw) as r:
                body = await r.json()
                if r.status >= 300:
                    raise RuntimeError(f"{method} {path}: {r.status} {body}")
                return body

        reg = await call(
            "POST", "/auth/register",
            json={"email": email, "password": secrets.token_urlsafe(16),
                  "displayName": "Bench"},
        )  # fmt: skip
        auth = {"Authorization": f"Bearer {reg['accessToken']}"}
        tenant = await call(
            "POST", "/api/v1/tenants", headers=auth,
            json={"displayName": "Bench", "nodeProfile": "full"},
        )  # fmt: skip
        key = (
            await call(
                "POST", f"/api/v1/tenants/{tenant['id']}/keys", headers=auth, json={"label": "b"}
            )
        )["rawKey"]
        deadline = time.monotonic() + READY_TIMEOUT
        while (await call("GET", f"/api/v1/tenants/{tenant['id']}", headers=auth))[
            "phase"
        ] != "Ready":
            if time.monotonic() > deadline:
                raise RuntimeError("tenant not Ready")
            await asyncio.sleep(0.3)

        async def create(i: int) -> None:
            spec = {
                "apiVersion": "astromesh/v1",
                "kind": "Agent",
                "metadata": {"name": f"agent-{i:03}", "version": "1.0.0"},
                "spec": {
                    "identity": {"display_name": f"Agent {i}"},
                    "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
                    "orchestration": {"pattern": "react"},
                },
            }
            await call("POST", "/api/v1/agents", json=spec, headers={"X-API-Key": key})

        await bounded(range(n_agents), create, 16)
        while len(await call("GET", "/api/v1/agents", headers={"X-API-Key": key})) < n_agents:
            if time.monotonic() > deadline:
                raise RuntimeError("agents not listed")
            await asyncio.sleep(0.2)
        return str(key)


# -- load -------------------------------------------------------------------------------------


async def load(
    urls: list[str], headers: dict[str, str], connections: int, duration: float, warmup: float
) -> tuple[float, list[float], int]:
    """(requests/s, latencies in s, non-200 count) of GET /api/v1/agents, the connections
    spread evenly over ``urls``."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as s:
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + duration
        counted = 0

        async def worker(i: int) -> None:
            nonlocal errors, counted
            target = f"{urls[i % len(urls)]}/api/v1/agents"
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                async with s.get(target) as r:
                    await r.read()
                    ok = r.status == 200
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    counted += 1
                    latencies.append(t1 - t0)
                    errors += not ok

        await asyncio.gather(*(worker(i) for i in range(connections)))
    return counted / duration, latencies, errors


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
    workdir = Path(tempfile.mkdtemp(prefix="nexus-bench-api-"))
    secret = secrets.token_urlsafe(48)
    managers: list[asyncio.subprocess.Process] = []
    bare: asyncio.subprocess.Process | None = None
    with PostgresServer(bindir) as pg:
        database = pg.create_database("bench")
        async with (
            Environment(crd_paths=["config/crd/bases"]) as env,
            await env.api_client() as api,
        ):
            client = Client(api)
            await client.create(NAMESPACES, {"metadata": {"name": SYSTEM}})

            async def manager(db: str, tag: str) -> tuple[str, int]:
                proc, url = await start_manager(
                    env.kubeconfig_path, workdir, args.agents, database=db, secret=secret, tag=tag
                )
                managers.append(proc)
                return url, proc.pid

            try:
                (sqlite_url, sqlite_pid) = await manager(str(workdir / "nexus.db"), "sqlite")
                (pg_a, pid_a), (pg_b, pid_b) = await asyncio.gather(
                    manager(database, "a"), manager(database, "b")
                )
                sqlite_key = await populate(sqlite_url, args.agents, "sqlite@example.com")
                pg_key = await populate(pg_a, args.agents, "pg@example.com")
                await asyncio.sleep(2)  # last status writes settle
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"{sqlite_url}/api/v1/agents", headers={"X-API-Key": sqlite_key}) as r,
                ):
                    body = await r.read()
                bare, bare_url = await start_bare(body, workdir)
                sides = {
                    "bare aiohttp": ([bare_url], {}, [bare.pid]),
                    "nexus sqlite": ([sqlite_url], {"X-API-Key": sqlite_key}, [sqlite_pid]),
                    "nexus postgres": ([pg_a], {"X-API-Key": pg_key}, [pid_a]),
                    "nexus postgres x2": ([pg_a, pg_b], {"X-API-Key": pg_key}, [pid_a, pid_b]),
                }
                # Alternate the sides, round after round, so that drift in the machine's load
                # (it may be shared) hits all alike; each side is judged by its median round.
                runs: dict[str, list[tuple[float, list[float], int, float]]] = {
                    k: [] for k in sides
                }
                for _ in range(args.rounds):
                    for name, (urls, headers, side_pids) in sides.items():
                        cpu0 = sum(cpu_seconds(p) for p in side_pids)
                        rps, lat, errors = await load(
                            urls, headers, args.connections, args.duration, args.warmup
                        )
                        cpu = (sum(cpu_seconds(p) for p in side_pids) - cpu0) / (
                            args.duration + args.warmup
                        )
                        runs[name].append((rps, lat, errors, cpu))
            finally:
                if bare is not None:
                    await stop(bare)
                await asyncio.gather(*(stop(m) for m in managers))
                await client.close()
    rows = [
        ("agents in the tenant", str(args.agents)),
        ("response size", f"{len(body) / 1024:.1f} KiB"),
        (
            "connections / rounds x duration",
            f"{args.connections} / {args.rounds} x {args.duration:.0f} s per side, alternating",
        ),
        ("CPUs", str(os.cpu_count())),
    ]
    medians = {}
    for name, rounds in runs.items():
        rps, lat, errors, cpu = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
        medians[name] = rps
        rows.append(
            (
                name,
                f"{rps:8.0f} req/s   p50 {statistics.median(lat) * 1e3:6.1f} ms   "
                f"p99 {pct(lat, 0.99) * 1e3:6.1f} ms   non-200 {errors}   "
                f"server CPU {cpu * 100:.0f}%   "
                f"(rounds: {', '.join(f'{r[0]:.0f}' for r in rounds)})",
            )
        )
    ratio = medians["nexus sqlite"] / medians["bare aiohttp"]
    pg_ratio = medians["nexus postgres"] / medians["bare aiohttp"]
    pg_vs_sqlite = medians["nexus postgres"] / medians["nexus sqlite"]
    two_vs_one = medians["nexus postgres x2"] / medians["nexus postgres"]
    rows.append(("nexus sqlite / bare", f"{ratio:.3f}   (target >= 0.8)"))
    rows.append(("nexus postgres / bare", f"{pg_ratio:.3f}"))
    rows.append(("nexus postgres / nexus sqlite", f"{pg_vs_sqlite:.3f}"))
    rows.append(("two replicas / one (postgres)", f"{two_vs_one:.3f}"))
    print(table(rows))
    print(
        f"ratio={ratio:.3f} pg_ratio={pg_ratio:.3f} pg_vs_sqlite={pg_vs_sqlite:.3f} "
        f"two_vs_one={two_vs_one:.3f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        serve_bare(int(sys.argv[2]), sys.argv[3])
    else:
        asyncio.run(main())
