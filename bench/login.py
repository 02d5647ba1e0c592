"""Login throughput with cost-12 bcrypt, and event-loop health during a login storm.

The REST app (``nexus.api.server.create_app``, the rate limits raised out of the way) runs in a
subprocess of its own; this process measures one cost-12 bcrypt check, then drives
``POST /auth/login`` with many concurrent clients while probing ``GET /healthz``. Twice: on a
SQLite store, then on a PostgreSQL store (a server started here from Debian's package), where
each login also counts its two rate limits in the database.

* ideal throughput = CPUs / (time of one cost-12 check), measured here first, alone;
* target: logins/s >= 0.85 x ideal, and healthz p99 < 25 ms during the storm (bcrypt must
  run off the event loop, in a pool no larger than the CPUs).

    .venv/bin/python -m bench.login [--duration 8] [--rounds 3] [--concurrency 16]

Targets (each store): logins/s >= 0.85 x ideal, healthz p99 < 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import bcrypt

from bench.common import table
from nexus.runtime.envtest import free_port
from tests.support.postgres import PostgresServer, find_bindir

USERS = 4


# -- the server (run as `python -m bench.login --serve PORT DATABASE`) --------------------------


async def serve(port: int, db: str) -> None:
    import dataclasses

    from aiohttp import web

    from nexus.api.auth import TokenService
    from nexus.api.context import ApiContext
    from nexus.api.server import create_app
    from nexus.api.store import open_store
    from nexus.app import api_settings
    from nexus.runtime.logging import configure_logging
    from nexus.settings import ManagerSettings

    configure_logging(json=False, level="warning")
    store = await open_store(db)
    unlimited = (10**9, 60.0)
    context = ApiContext(
        settings=dataclasses.replace(
            api_settings(ManagerSettings()),
            auth_per_address=unlimited,
            auth_per_account=unlimited,
        ),
        store=store,
        tokens=TokenService(secrets.token_bytes(48)),
        # /auth/* and /healthz touch neither the cluster nor a node.
        kube=None,  # type: ignore[arg-type]
        cache=None,  # type: ignore[arg-type]
        node=None,  # type: ignore[arg-type]
    )
    runner = web.AppRunner(create_app(context), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# -- measurements -------------------------------------------------------------------------------


def one_check_seconds(samples: int = 7) -> float:
    """Median wall time of one cost-12 bcrypt check, in this process, with nothing else."""
    hashed = bcrypt.hashpw(b"correct horse battery", bcrypt.gensalt(12))
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        bcrypt.checkpw(b"correct horse battery", hashed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def probe_healthz(url: str, stop: asyncio.Event, interval: float = 0.02) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            t0 = time.perf_counter()
            async with s.get(f"{url}/healthz") as r:
                await r.read()
                assert r.status == 200
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(interval)
    return latencies


async def start_server(database: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.login", "--serve", str(port), database,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        return proc, url
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start")


async def prepare(url: str) -> tuple[list[dict[str, str]], list[float]]:
    """Register the users; then 2 s of healthz latencies with nothing else going on."""
    users = []
    async with aiohttp.ClientSession() as s:
        for i in range(USERS):
            email, password = f"bench-{i}@example.com", secrets.token_urlsafe(16)
            body = {"email": email, "password": password, "displayName": "Bench"}
            async with s.post(f"{url}/auth/register", json=body) as r:
                assert r.status == 201, await r.text()
            users.append({"email": email, "password": password})
    idle_stop = asyncio.Event()
    idle_task = asyncio.create_task(probe_healthz(url, idle_stop))
    await asyncio.sleep(2.0)
    idle_stop.set()
    return users, await idle_task


async def storm(
    url: str, users: list[dict[str, str]], duration: float, warmup: float, concurrency: int
) -> tuple[float, int, list[float]]:
    """(logins/s, failures, healthz latencies during the storm)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + duration
        logins = 0
        failures = 0

        async def worker(i: int) -> None:
            nonlocal logins, failures
            creds = users[i % USERS]
            while time.perf_counter() < end:
                async with s.post(f"{url}/auth/login", json=creds) as r:
                    await r.read()
                    done = time.perf_counter()
                    if measure_from <= done < end:
                        if r.status == 200:
                            logins += 1
                        else:
                            failures += 1

        stop = asyncio.Event()
        prober = asyncio.create_task(probe_healthz(url, stop))
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        stop.set()
        during = await prober
    return logins / duration, failures, during


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=0, help="default: 8 x CPUs")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    concurrency = args.concurrency or 8 * cpus
    check = one_check_seconds()
    ideal = cpus / check
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")

    workdir = Path(tempfile.mkdtemp(prefix="nexus-bench-login-"))
    procs: list[asyncio.subprocess.Process] = []
    rounds: dict[str, list[tuple[float, int]]] = {"sqlite": [], "postgres": []}
    during: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    idle: dict[str, list[float]] = {}
    with PostgresServer(bindir) as pg:
        try:
            sides = {}
            for name, database in (
                ("sqlite", str(workdir / "nexus.db")),
                ("postgres", pg.create_database("login")),
            ):
                proc, url = await start_server(database)
                procs.append(proc)
                users, idle[name] = await prepare(url)
                sides[name] = (url, users)
            # Both servers stay up (the idle one costs nothing) and the sides alternate, so
            # that drift in the machine's load hits both alike; the median round counts.
            for _ in range(args.rounds):
                for name, (url, users) in sides.items():
                    rate, failures, probes = await storm(
                        url, users, args.duration, args.warmup, concurrency
                    )
                    rounds[name].append((rate, failures))
                    during[name] += probes
        finally:
            for proc in procs:
                proc.terminate()
                await proc.wait()

    rows = [
        ("CPUs", str(cpus)),
        ("one cost-12 check (alone)", f"{check * 1e3:.0f} ms"),
        ("ideal (CPUs / check)", f"{ideal:.2f} logins/s"),
        ("concurrent clients", str(concurrency)),
        ("rounds x duration", f"{args.rounds} x {args.duration:.0f} s per store, alternating"),
    ]
    medians = {}
    for name, results in rounds.items():
        rate, _ = sorted(results)[len(results) // 2]
        medians[name] = rate
        failed = sum(f for _, f in results)
        probes = during[name]
        rows += [
            (
                f"{name}: measured",
                f"{rate:.2f} logins/s ({failed} failed; rounds: "
                f"{', '.join(f'{r:.2f}' for r, _ in results)})",
            ),
            (f"{name}: measured / ideal", f"{rate / ideal:.3f}   (target >= 0.85)"),
            (
                f"{name}: healthz idle",
                f"p50 {statistics.median(idle[name]) * 1e3:.1f} ms  "
                f"p99 {pct(idle[name], 0.99) * 1e3:.1f} ms",
            ),
            (
                f"{name}: healthz during the storms",
                f"p50 {statistics.median(probes) * 1e3:.1f} ms  "
                f"p99 {pct(probes, 0.99) * 1e3:.1f} ms  max {max(probes) * 1e3:.1f} ms  "
                f"({len(probes)} probes; target p99 < 25 ms)",
            ),
        ]
    sqlite_rate, pg_rate = medians["sqlite"], medians["postgres"]
    rows.append(("postgres / sqlite", f"{pg_rate / sqlite_rate:.3f}"))
    print(table(rows))
    print(
        f"ratio={sqlite_rate / ideal:.3f} "
        f"healthz_p99_ms={pct(during['sqlite'], 0.99) * 1e3:.1f} "
        f"pg_ratio={pg_rate / ideal:.3f} "
        f"pg_healthz_p99_ms={pct(during['postgres'], 0.99) * 1e3:.1f} "
        f"pg_vs_sqlite={pg_rate / sqlite_rate:.3f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
    else:
        asyncio.run(main())
