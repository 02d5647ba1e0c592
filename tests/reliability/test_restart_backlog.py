"""Case 5: a restart with 1000 Ready tenants. The initial list is queued at low priority, so a
tenant created right after the restart is served first; converged tenants cost no API write.

The 1000 tenants are provisioned by a first manager run (the honest way to reach the state the
reconciler itself produces), which is then stopped; the second manager is the one measured.

A converged tenant costs a fraction of a millisecond, so the whole initial list is worked off
in about a second: "Ready within 3 s" alone would hold even without priorities. What shows the
newcomer jumped the queue is how much of the backlog was still queued when it was Ready.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from nexus.domain.resources import TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.workqueue import LOW_PRIORITY

from ..support.faults import Metrics, NexusManager, bounded, eventually, phase_of, tenant_body
from .conftest import make_system_namespace, short_id

pytestmark = pytest.mark.cluster

BACKLOG = 1000
READY_WITHIN = 3.0


async def ready_count(kube: Client, ns: str) -> int:
    items, _ = await kube.list_all(TENANTS, ns)
    return sum(1 for t in items if phase_of(t) == "Ready")


def queued(m: Metrics) -> float:
    """Tenant requests waiting in the queue, over all priorities."""
    return m.value("workqueue_depth", name="nexustenant")


async def test_new_tenant_jumps_the_initial_list_and_converged_ones_write_nothing(
    bulk_env: Environment, bulk_kube: Client, tmp_path: Path
) -> None:
    kube = bulk_kube
    system_ns = await make_system_namespace(kube, "backlog")
    uid = short_id()
    await bounded(
        range(BACKLOG), lambda i: kube.create(TENANTS, tenant_body(f"b{uid}-{i:04}", system_ns)), 32
    )

    def manager(tag: str, *extra: str) -> NexusManager:
        return NexusManager(
            bulk_env.kubeconfig_path,
            tmp_path / tag,
            extra=[f"--namespace={system_ns}", "--log-level=warning", *extra],
        )

    first = manager("first", "--tenant-concurrency=16")
    await first.start()
    try:
        await eventually(
            lambda: _all_ready(kube, system_ns, BACKLOG),
            timeout=90,
            interval=0.5,
            message="backlog",
        )
    finally:
        assert await first.stop() == 0, first.log_tail()

    second = manager("second")
    await second.spawn()
    try:
        # "Immediately after it starts": as soon as its initial list is queued (low priority),
        # which is before the other caches have synced and the workers run.
        at_start = await eventually(
            lambda: _queued(second, BACKLOG), timeout=30, interval=0.01, message="initial list"
        )
        newcomer = f"b{uid}-new"
        created = time.monotonic()
        await kube.create(TENANTS, tenant_body(newcomer, system_ns))
        became_ready = await _ready_time(kube, system_ns, newcomer, timeout=READY_WITHIN + 10)
        # Scraped after the newcomer was seen Ready: how much of the backlog was done by then.
        m = await second.metrics()
        done_before = m.value("controller_runtime_reconcile_total", controller="nexustenant")
        behind = queued(m)
        took = became_ready - created
        print(f"newcomer Ready in {took:.2f}s; {done_before:.0f} done, {behind:.0f} still queued")
        assert took < READY_WITHIN, f"new tenant Ready after {took:.2f}s"
        assert behind > 0 and done_before < BACKLOG, (
            f"the newcomer waited for the backlog: {done_before:.0f} reconciles done, "
            f"{behind:.0f} still queued when it was Ready"
        )
        low = at_start.value("workqueue_depth", name="nexustenant", priority=str(LOW_PRIORITY))
        assert low >= BACKLOG, "the initial list was not queued at low priority"

        # Everything settles; then the only writes are the newcomer's.
        async def drained() -> Metrics | None:
            m = await second.metrics()
            reconciled = m.value("controller_runtime_reconcile_total", controller="nexustenant")
            settled = queued(m) == 0 and reconciled >= BACKLOG + 1
            return m if settled else None

        await eventually(drained, timeout=30, interval=0.5, message="backlog drained")
        await asyncio.sleep(2.0)  # in-flight events and status writes
        writes = (await second.metrics()).requests(writes_only=True)
    finally:
        assert await second.stop() == 0, second.log_tail()
    print(f"writes of the restarted manager: {dict(writes)}")
    # PATCH: finalizer, Provisioning, Ready. POST: namespace, ServiceAccount, 3 NetworkPolicies,
    # ResourceQuota, LimitRange, Deployment, Service; and two events.
    assert sum(writes.values()) <= 14, writes
    assert writes[("POST", "201")] <= 11 and writes[("PATCH", "200")] <= 3, writes


async def _queued(mgr: NexusManager, n: int) -> Metrics | None:
    try:
        m = await mgr.metrics()
    except (aiohttp.ClientError, OSError):
        return None  # not serving yet
    return m if queued(m) >= n else None


async def _all_ready(kube: Client, ns: str, n: int) -> bool:
    return await ready_count(kube, ns) >= n


async def _ready_time(kube: Client, ns: str, name: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if phase_of(await kube.get_or_none(TENANTS, name, ns)) == "Ready":
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"tenant {name} not Ready within {timeout}s")
