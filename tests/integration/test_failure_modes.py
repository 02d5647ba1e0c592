"""Failure modes that operators built on kopf and controller-runtime have met in production.

The others have their own tests: silent watch (test_informer), thundering herd and priorities
(test_controller, unit workqueue), finalizer races (test_controller), leader election loss
(test_leader_election), cache never syncing (test_manager), churn (reliability).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s_client
from structlog.testing import capture_logs

from nexus.app import build_manager
from nexus.domain.resources import TENANTS
from nexus.runtime import Builder, ControllerOptions, Manager, ManagerOptions, Request, Result
from nexus.runtime.client import Client
from nexus.runtime.informer import Informer, InformerOptions
from nexus.runtime.ratelimiter import ItemExponentialFailureRateLimiter
from nexus.runtime.resource import CONFIGMAPS, NAMESPACES

from ..support.node import AstromeshNode
from .test_informer import cm, eventually
from .test_nexus_controllers import (
    SYSTEM_NS,
    nexus_settings,
    phase,
    tenant_body,
    uid,
    wait_for,
    wait_gone,
)

pytestmark = pytest.mark.cluster


class FlakyList(Client):
    """A client whose first ``failures`` lists fail, as behind a sick API server."""

    def __init__(self, api: k8s_client.ApiClient, failures: int) -> None:
        super().__init__(api)
        self.failures = failures

    async def list_all(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("injected list failure")
        return await super().list_all(*args, **kwargs)


class Explodes(Informer):
    """An informer whose event handling raises once, like a bug in a transform."""

    exploded = False

    def _apply(self, event: dict[str, Any]) -> None:
        if not self.exploded and event.get("type") == "ADDED":
            self.exploded = True
            raise RuntimeError("injected bug while applying an event")
        super()._apply(event)


async def test_failing_lists_and_crashing_watch_do_not_make_a_zombie(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str
) -> None:
    opts = InformerOptions(backoff_initial=0.05, backoff_cap=0.2)
    flaky = FlakyList(api_client, failures=3)
    inf = Informer(flaky, CONFIGMAPS, namespace=namespace, options=opts)
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_for_sync(), 10)
        assert flaky.failures == 0 and inf.stats["lists"] == 4
    finally:
        await inf.stop()
        await flaky.close()

    boom = Explodes(kube, CONFIGMAPS, namespace=namespace, options=opts)
    boom.start()
    try:
        await asyncio.wait_for(boom.wait_for_sync(), 10)
        await kube.create(CONFIGMAPS, cm("after-crash", namespace))
        # The event that blew up is delivered again by the re-watch from the last version.
        await eventually(lambda: boom.get("after-crash", namespace) is not None, 10)
        assert boom.exploded and boom.running
    finally:
        await boom.stop()


async def test_healthz_fails_when_an_informer_is_dead(
    api_client: k8s_client.ApiClient, namespace: str
) -> None:
    mgr = Manager(
        api_client,
        ManagerOptions(metrics_bind_address="0", health_probe_bind_address="127.0.0.1:0"),
    )
    Builder(mgr).named(f"zombie-{uid()}").for_(CONFIGMAPS, namespace=namespace).complete(_Noop())
    await mgr.start()
    try:
        port = mgr.server_ports["probes"]
        url = f"http://127.0.0.1:{port}/healthz?verbose"
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:
                assert r.status == 200
            await mgr.cache.informers[0].stop()  # the watch task is gone
            async with s.get(url) as r:
                assert r.status == 500
                assert "[-]informers failed" in await r.text()
    finally:
        await mgr.stop()


class _Noop:
    async def reconcile(self, request: Request) -> Result | None:
        return None


class StaleWriter:
    """Writes twice from one cached copy: the second write always meets 409 (stale cache)."""

    def __init__(self, mgr: Manager) -> None:
        self.mgr = mgr
        self.calls = 0
        self.done = asyncio.Event()

    async def reconcile(self, request: Request) -> Result | None:
        self.calls += 1
        obj = self.mgr.cache.get(CONFIGMAPS, request.name, request.namespace)
        if obj is None:
            return None
        count = int((obj.get("data") or {}).get("count", "0"))
        if count >= 5:
            self.done.set()
            return None
        body = {**obj, "data": {"count": str(count + 1)}}
        await self.mgr.client.replace(CONFIGMAPS, body)  # resourceVersion from the cache
        # Same stale resourceVersion again, as a reconcile that re-reads its own cache would.
        await self.mgr.client.replace(CONFIGMAPS, {**obj, "data": {"count": str(count + 1)}})
        return None


async def test_stale_cache_conflicts_are_retried_quietly(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str
) -> None:
    mgr = Manager(
        api_client, ManagerOptions(metrics_bind_address="0", health_probe_bind_address="0")
    )
    rec = StaleWriter(mgr)
    (
        Builder(mgr)
        .named(f"stale-{uid()}")
        .for_(CONFIGMAPS, namespace=namespace)
        .with_options(ControllerOptions(rate_limiter=ItemExponentialFailureRateLimiter(0.005, 1.0)))
        .complete(rec)
    )
    await mgr.start()
    try:
        with capture_logs() as logs:
            await kube.create(CONFIGMAPS, cm("counter", namespace, {"count": "0"}))
            await asyncio.wait_for(rec.done.wait(), 15)
        conflicts = [e for e in logs if e["event"] == "reconcile.conflict"]
        errors = [e for e in logs if e["event"] == "reconcile.error"]
        assert len(conflicts) >= 5  # every reconcile met one
        assert errors == []  # a 409 from our own stale read is not an alarm
        assert all(e["log_level"] == "info" for e in conflicts)
        assert rec.calls < 60, "a conflict storm instead of fast, bounded retries"
        final = await kube.get(CONFIGMAPS, "counter", namespace)
        assert final["data"]["count"] == "5"
    finally:
        await mgr.stop()


@pytest.fixture
async def down_node() -> AsyncIterator[AstromeshNode]:
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


async def test_deletion_while_the_operator_is_down_completes_on_restart(
    api_client: k8s_client.ApiClient, kube: Client, down_node: AstromeshNode
) -> None:
    if await kube.get_or_none(NAMESPACES, SYSTEM_NS) is None:
        await kube.create(NAMESPACES, {"metadata": {"name": SYSTEM_NS}})
    name = f"tenant-{uid()}"
    first = build_manager(api_client, nexus_settings(down_node))
    await first.start()
    try:
        await kube.create(TENANTS, tenant_body(name))
        await wait_for(kube, TENANTS, name, SYSTEM_NS, phase("Ready"))
    finally:
        await first.stop()
    await kube.delete(TENANTS, name, SYSTEM_NS)
    await asyncio.sleep(1.0)
    held = await kube.get(TENANTS, name, SYSTEM_NS)
    assert held["metadata"]["deletionTimestamp"]  # the finalizer holds it while we are down
    second = build_manager(api_client, nexus_settings(down_node))
    await second.start()
    try:
        await wait_gone(kube, NAMESPACES, name)
        await wait_gone(kube, TENANTS, name, SYSTEM_NS)
    finally:
        await second.stop()
