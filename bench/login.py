"""Login throughput with cost-12 bcrypt, and event-loop health during a login storm.

The REST app (``nexus.api.server.create_app``, the rate limits raised out of the way) runs in a
subprocess of its own; this process measures one cost-12 bcrypt check, then drives
``POST /auth/login`` with many concurrent clients while probing ``GET /healthz``. Twice: on a
SQLite store, then on a PostgreSQL store (a server started here from Debian's package), where
each login also counts its two rate limits in the database.

* ideal throughput = CPUs / (time of one cost-12 check), measured here first, alone;
* target: logins/s >= 0.85 x ideal, and healthz p99 < 25 ms during the storm (bcrypt must
  run off the event loop, in a pool no larger than the CPUs).

    .venv/bin/python -m bench.login [--duration 15] [--concurrency 16]

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
    from aiohttp import web

    from nexus.api.auth import TokenService
    from nexus.api.context import ApiContext, ApiSettings
    from nexus.api.server import create_app
    from nexus.api.store import open_store
    from nexus.runtime.logging import configure_logging

    configure_logging(json=False, level="warning")
    store = await open_store(db)
    unlimited = (10**9, 60.0)
    context = ApiContext(
        settings=ApiSettings(auth_per_address=unlimited, auth_per_account=unlimited),
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


async def storm(
    database: str, duration: float, warmup: float, concurrency: int
) -> tuple[float, int, list[float], list[float]]:
    """(logins/s, failures, healthz latencies idle, healthz latencies during the storm)."""
    proc, url = await start_server(database)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            users = []
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
            idle = await idle_task

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
    finally:
        proc.terminate()
        await proc.wait()
    return logins / duration, failures, idle, during


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
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
    results = {}
    with PostgresServer(bindir) as pg:
        for name, database in (
            ("sqlite", str(workdir / "nexus.db")),
            ("postgres", pg.create_database("login")),
        ):
            results[name] = await storm(database, args.duration, args.warmup, concurrency)

    rows = [
        ("CPUs", str(cpus)),
        ("one cost-12 check (alone)", f"{check * 1e3:.0f} ms"),
        ("ideal (CPUs / check)", f"{ideal:.2f} logins/s"),
        ("concurrent clients", str(concurrency)),
    ]
    for name, (rate, failures, idle, during) in results.items():
        p99 = pct(during, 0.99) * 1e3
        rows += [
            (
                f"{name}: measured",
                f"{rate:.2f} logins/s over {args.duration:.0f} s ({failures} failed)",
            ),
            (f"{name}: measured / ideal", f"{rate / ideal:.3f}   (target >= 0.85)"),
            (
                f"{name}: healthz idle",
                f"p50 {statistics.median(idle) * 1e3:.1f} ms  p99 {pct(idle, 0.99) * 1e3:.1f} ms",
            ),
            (
                f"{name}: healthz during the storm",
                f"p50 {statistics.median(during) * 1e3:.1f} ms  p99 {p99:.1f} ms  "
                f"max {max(during) * 1e3:.1f} ms  ({len(during)} probes; target p99 < 25 ms)",
            ),
        ]
    sqlite_rate, pg_rate = results["sqlite"][0], results["postgres"][0]
    rows.append(("postgres / sqlite", f"{pg_rate / sqlite_rate:.3f}"))
    print(table(rows))
    print(
        f"ratio={sqlite_rate / ideal:.3f} "
        f"healthz_p99_ms={pct(results['sqlite'][3], 0.99) * 1e3:.1f} "
        f"pg_ratio={pg_rate / ideal:.3f} "
        f"pg_healthz_p99_ms={pct(results['postgres'][3], 0.99) * 1e3:.1f} "
        f"pg_vs_sqlite={pg_rate / sqlite_rate:.3f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
    else:
        asyncio.run(main())
