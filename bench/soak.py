"""Soak: steady tenant/agent churn plus REST API load against a `nexus manager` process.

A local control plane (with kube-controller-manager, so deleted namespaces really go), a real
astromesh node, and `nexus manager` as a subprocess with its REST API. For ``--minutes``:

* tenant churn: a NexusTenant with two NexusAgents is created every ``--churn-every`` seconds
  and deleted ``--lifetime`` seconds later (create->Ready, agent->Running, delete->gone timed);
* agent churn through the API: agents created with an API key, Running, then deleted;
* API reads (``/api/v1/me``, ``/api/v1/tenants``) and API key create/revoke.

The manager's RSS is sampled every 5 s (all samples in ``<workdir>/rss.csv``). Verdict: memory
levels off (RSS grew less than 1 % over the second half of the run, comparing the mean of the
window that ends at the half-way mark with the mean of the last window, each a tenth of the run
up to 10 minutes) and there were no errors (failed API calls, convergence timeouts, error-level
lines in the manager's log). Run it for 2 hours to read the second half as "the last hour".

    .venv/bin/python -m bench.soak [--minutes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import memtrace
from bench.common import table
from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES
from tests.support.faults import Metrics, NexusManager, agent_body, phase_of, tenant_body
from tests.support.node import AstromeshNode

SYSTEM = "nexus-system"
CONVERGE_TIMEOUT = 60.0


class SoakManager(NexusManager):
    """The manager, under tracemalloc when ``NEXUS_TRACEMALLOC=1`` (snapshots diffs in
    ``<workdir>/tracemalloc.txt``, every ``NEXUS_TRACEMALLOC_INTERVAL`` s; see memtrace)."""

    def args(self) -> list[str]:
        args = super().args()
        module = args.index("nexus.cli")
        return [
            *memtrace.wrap(["nexus.cli"], self.workdir / "tracemalloc.txt"),
            *args[module + 1 :],
        ]


PASSWORD = "soak-password-123"


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    api_calls: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)
    cycles: int = 0

    def timed(self, what: str, seconds: float) -> None:
        self.latencies.setdefault(what, []).append(seconds)

    def error(self, what: str) -> None:
        self.errors.append(what)
        print(f"error: {what}", file=sys.stderr)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def histogram_quantile(m: Metrics, name: str, q: float, **labels: str) -> float:
    """Prometheus' histogram_quantile over the ``_bucket`` samples of one histogram."""
    buckets = sorted(
        (float(lab["le"]), v)
        for n, lab, v in m.samples
        if n == f"{name}_bucket" and all(lab.get(k) == w for k, w in labels.items())
    )
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 0.0)
        prev_le, prev_count = le, count
    return prev_le


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def wait_until(probe: Any, timeout: float = CONVERGE_TIMEOUT) -> float | None:
    """Seconds until ``probe()`` is true, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await probe():
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    return None


# -- workloads --------------------------------------------------------------------------------


async def tenant_cycle(kube: Client, stats: Stats, k: int, lifetime: float) -> None:
    name = f"soak-{k:05}"
    agents = [f"{name}-a{j}" for j in range(2)]
    await kube.create(TENANTS, tenant_body(name, SYSTEM))

    async def ready() -> bool:
        return phase_of(await kube.get_or_none(TENANTS, name, SYSTEM)) == "Ready"

    took = await wait_until(ready)
    if took is None:
        stats.error(f"tenant {name} not Ready")
        return
    stats.timed("tenant create->Ready", took)
    for a in agents:
        await kube.create(AGENTS, agent_body(a, name))

    async def running() -> bool:
        phases = [phase_of(await kube.get_or_none(AGENTS, a, name)) for a in agents]
        return all(p == "Running" for p in phases)

    took = await wait_until(running)
    if took is None:
        stats.error(f"agents of {name} not Running")
    else:
        stats.timed("agent create->Running", took)
    await asyncio.sleep(lifetime)
    await kube.delete(TENANTS, name, SYSTEM)

    async def gone() -> bool:
        return (
            await kube.get_or_none(TENANTS, name, SYSTEM) is None
            and await kube.get_or_none(NAMESPACES, name) is None
        )

    took = await wait_until(gone, 2 * CONVERGE_TIMEOUT)
    if took is None:
        stats.error(f"tenant {name} not deleted")
    else:
        stats.timed("tenant delete->gone", took)


async def tenant_churn(
    kube: Client, stats: Stats, until: float, every: float, lifetime: float
) -> None:
    cycles: set[asyncio.Task[None]] = set()
    for k in itertools.count():
        if time.monotonic() >= until:
            break
        task = asyncio.create_task(tenant_cycle(kube, stats, k, lifetime))
        cycles.add(task)
        task.add_done_callback(cycles.discard)
        stats.cycles += 1
        await asyncio.sleep(every)
    if cycles:
        for result in await asyncio.gather(*cycles, return_exceptions=True):
            if isinstance(result, BaseException):
                stats.error(f"tenant cycle failed: {result!r}")


class Api:
    def __init__(self, url: str, session: aiohttp.ClientSession, stats: Stats) -> None:
        self.url = url
        self.s = session
        self.stats = stats

    async def call(
        self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201), **h: str
    ) -> Any:
        self.stats.api_calls += 1
        try:
            async with self.s.request(method, self.url + path, json=body, headers=h) as r:
                out = await r.json(content_type=None)
                if r.status not in ok:
                    self.stats.error(f"{method} {path}: {r.status} {out}")
                    return None
                return out
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stats.error(f"{method} {path}: {exc!r}")
            return None


async def api_setup(api: Api) -> tuple[dict[str, str], dict[str, str], str, str]:
    bundle = await api.call(
        "POST",
        "/auth/register",
        {"email": "soak@example.com", "password": PASSWORD, "displayName": "Soak"},
    )
    if bundle is None:
        raise RuntimeError("registration failed")
    bearer = {"Authorization": f"Bearer {bundle['accessToken']}"}
    tenant = await api.call("POST", "/api/v1/tenants", {"displayName": "Soak API"}, **bearer)
    if tenant is None:
        raise RuntimeError("tenant creation failed")

    async def ready() -> bool:
        t = await api.call("GET", f"/api/v1/tenants/{tenant['id']}", **bearer)
        return bool(t and t.get("phase") == "Ready")

    if await wait_until(ready) is None:
        raise RuntimeError("API tenant never Ready")
    key = await api.call(
        "POST", f"/api/v1/tenants/{tenant['id']}/keys", {"label": "soak"}, **bearer
    )
    return bearer, {"X-API-Key": key["rawKey"]}, tenant["id"], bundle["refreshToken"]


async def keep_token_fresh(
    api: Api, bearer: dict[str, str], refresh: str, until: float, every: float = 300.0
) -> None:
    """Rotate the access token well within its 15-minute lifetime, as a client would."""
    while True:
        await asyncio.sleep(min(every, max(until - time.monotonic(), 0.0)))
        if time.monotonic() >= until:
            return
        pair = await api.call("POST", "/auth/refresh", {"refreshToken": refresh}, ok=(200,))
        if pair is not None:
            bearer["Authorization"] = f"Bearer {pair['accessToken']}"
            refresh = pair["refreshToken"]


def agent_spec(name: str) -> dict[str, Any]:
    return agent_body(name, "unused")["spec"]["agentSpec"]  # type: ignore[no-any-return]


async def api_agent_churn(api: Api, key: dict[str, str], until: float) -> None:
    for k in itertools.count():
        if time.monotonic() >= until:
            return
        name = f"api-bot-{k:05}"
        start = time.monotonic()
        if await api.call("POST", "/api/v1/agents", agent_spec(name), **key) is None:
            await asyncio.sleep(2)
            continue

        async def running(name: str = name) -> bool:
            out = await api.call("GET", f"/api/v1/agents/{name}", **key)
            return bool(out and out["status"]["phase"] == "Running")

        if await wait_until(running) is None:
            api.stats.error(f"API agent {name} not Running")
        else:
            api.stats.timed("API agent create->Running", time.monotonic() - start)
        await asyncio.sleep(3)
        await api.call("DELETE", f"/api/v1/agents/{name}", **key)
        await asyncio.sleep(1)


async def api_reads(api: Api, bearer: dict[str, str], key: dict[str, str], until: float) -> None:
    tick = 0
    while time.monotonic() < until:
        start = time.monotonic()
        await api.call("GET", "/api/v1/me", **key)
        await api.call("GET", "/api/v1/tenants", **bearer)
        api.stats.timed("API read pair", time.monotonic() - start)
        tick += 1
        if tick % 25 == 0:
            tenant_id = (await api.call("GET", "/api/v1/tenants", **bearer) or [{}])[0].get("id")
            created = await api.call(
                "POST", f"/api/v1/tenants/{tenant_id}/keys", {"label": "tmp"}, **bearer
            )
            if created:
                await api.call(
                    "DELETE", f"/api/v1/tenants/{tenant_id}/keys/{created['hash']}", **bearer
                )
        await asyncio.sleep(0.1)


async def sample_rss(pid: int, stats: Stats, until: float, every: float = 5.0) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        stats.rss.append((time.monotonic() - start, rss_of(pid)))
        await asyncio.sleep(every)


# -- report -----------------------------------------------------------------------------------


def second_half_growth(rss: list[tuple[float, int]], duration: float) -> float:
    """Percent RSS growth over the run's second half (mean of a window at each end of it)."""
    window = min(600.0, duration / 10)
    half = duration / 2
    before = [v for t, v in rss if half - window <= t <= half]
    last = [v for t, v in rss if t >= duration - window]
    if not before or not last:
        return float("nan")
    return 100 * (statistics.fmean(last) - statistics.fmean(before)) / statistics.fmean(before)


def quarter_means(rss: list[tuple[float, int]], duration: float) -> list[float]:
    quarters: list[list[int]] = [[], [], [], []]
    for t, value in rss:
        quarters[min(3, int(4 * t / duration))].append(value)
    return [statistics.fmean(q) if q else float("nan") for q in quarters]


def error_lines(log: Path) -> list[str]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("level") in ("error", "critical"):
                out.append(line)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--churn-every", type=float, default=3.0, help="seconds between tenants")
    parser.add_argument("--lifetime", type=float, default=20.0, help="seconds a tenant lives")
    args = parser.parse_args()
    duration = args.minutes * 60
    stats = Stats()
    workdir = Path(tempfile.mkdtemp(prefix="nexus-soak-"))
    node = AstromeshNode()
    await node.start()
    env = Environment(crd_paths=["config/crd/bases"], with_controller_manager=True)
    try:
        async with env, await env.api_client() as api_client:
            kube = Client(api_client)
            await kube.create(NAMESPACES, {"metadata": {"name": SYSTEM}})
            mgr = SoakManager(
                env.kubeconfig_path,
                workdir,
                node_url=node.url,
                api=True,
                extra=[
                    "--log-level=warning",
                    "--error-requeue=5",
                    "--webhook-bind-address=127.0.0.1:0",
                ],
            )
            await mgr.start()
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
                    api = Api(mgr.url, s, stats)
                    bearer, key, _, refresh = await api_setup(api)
                    start = time.monotonic()
                    until = start + duration
                    await asyncio.gather(
                        sample_rss(mgr.pid, stats, until),
                        tenant_churn(kube, stats, until, args.churn_every, args.lifetime),
                        api_agent_churn(api, key, until),
                        api_reads(api, bearer, key, until),
                        keep_token_fresh(api, bearer, refresh, until),
                    )
                    elapsed = time.monotonic() - start
                metrics = await mgr.metrics()
                if mgr.proc is not None and mgr.proc.returncode is not None:
                    stats.error(f"manager exited with {mgr.proc.returncode}")
            finally:
                await mgr.stop()
            await kube.close()
    finally:
        await node.stop()
    logged = error_lines(mgr.log_path)
    errors = len(stats.errors) + len(logged)
    q = quarter_means(stats.rss, duration)
    growth = second_half_growth(stats.rss, duration)
    flat = growth < 1.0
    (workdir / "rss.csv").write_text(
        "seconds,rss_bytes\n" + "".join(f"{t:.1f},{v}\n" for t, v in stats.rss)
    )
    rows = [
        ("load / total duration", f"{duration / 60:.1f} / {elapsed / 60:.1f} min"),
        ("tenant cycles (tenant + 2 agents)", str(stats.cycles)),
        ("API calls", str(stats.api_calls)),
    ]
    for what, values in sorted(stats.latencies.items()):
        p50, p99 = quantile(values, 0.5), quantile(values, 0.99)
        rows.append((f"{what} p50 / p99", f"{p50:.3f} s / {p99:.3f} s  (n={len(values)})"))
    for ctrl in ("nexustenant", "nexusagent"):
        name = "controller_runtime_reconcile_time_seconds"
        p50 = histogram_quantile(metrics, name, 0.5, controller=ctrl)
        p99 = histogram_quantile(metrics, name, 0.99, controller=ctrl)
        total = metrics.value("controller_runtime_reconcile_total", controller=ctrl)
        rows.append((f"{ctrl} reconcile p50 / p99", f"{p50 * 1e3:.1f} ms / {p99 * 1e3:.1f} ms"))
        rows.append((f"{ctrl} reconciles", f"{total:.0f}"))
    rows += [
        ("manager RSS min / max", f"{min(r for _, r in stats.rss) / 2**20:.0f} / "
         f"{max(r for _, r in stats.rss) / 2**20:.0f} MiB"),
        ("manager RSS mean by quarter", " / ".join(f"{v / 2**20:.1f}" for v in q) + " MiB"),
        ("RSS last vs second quarter", f"{100 * (q[3] - q[1]) / q[1]:+.1f} %"),
        ("RSS growth over the second half", f"{growth:+.2f} %"),
        ("errors (bench / manager log)", f"{len(stats.errors)} / {len(logged)}"),
        ("verdict", "PASS" if flat and errors == 0 else "FAIL"),
    ]  # fmt: skip
    print(table(rows))
    print(f"RSS samples: {workdir / 'rss.csv'}")
    if memtrace.enabled():
        print(f"tracemalloc snapshots: {workdir / 'tracemalloc.txt'}")
    for line in (stats.errors + logged)[:10]:
        print(f"  {line[:300]}")
    ready = stats.latencies.get("tenant create->Ready", [])
    verdict = "PASS" if flat and not errors else "FAIL"
    print(
        f"rss_growth_pct={growth:.1f} errors={errors} "
        f"ready_p99_s={quantile(ready, 0.99):.3f} verdict={verdict}"
    )
    if verdict != "PASS":
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
