"""Case 4: watch streams that go silent without a FIN (a broken load balancer).

The proxy between the manager and the API server keeps the sockets open and forwards nothing;
new connections still flow. The informer's inactivity timeout (``--watch-idle-timeout``) must
notice and reopen the watch from the last resourceVersion, so no change is lost.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.domain.resources import TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.informer import Informer, InformerOptions
from nexus.runtime.resource import CONFIGMAPS

from ..support.faults import (
    FaultProxy,
    NexusManager,
    apiserver_port,
    eventually,
    phase_of,
    tenant_body,
    write_kubeconfig,
)
from .conftest import make_system_namespace, purge, short_id

pytestmark = pytest.mark.cluster

IDLE = 3.0
SLACK = 5.0
#: Watches of a Nexus manager: tenants, agents, node pods, and the tenants' namespaces,
#: Deployments, Services, ServiceAccounts, NetworkPolicies, ResourceQuotas and LimitRanges.
WATCHES = 10


async def test_blackholed_watches_are_reopened_within_the_idle_timeout(
    envtest: Environment, kube: Client, tmp_path: Path
) -> None:
    system_ns = await make_system_namespace(kube, "silent")
    uid = short_id()
    proxy = FaultProxy("127.0.0.1", apiserver_port(envtest))
    await proxy.start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", proxy.url, envtest.token)
    mgr = NexusManager(
        kubeconfig,
        tmp_path / "mgr",
        extra=[f"--namespace={system_ns}", f"--watch-idle-timeout={IDLE}"],
    )
    try:
        await mgr.start()
        await kube.create(TENANTS, tenant_body(f"s{uid}-warm", system_ns))
        await eventually(
            lambda: _phase(kube, f"s{uid}-warm", system_ns, "Ready"), timeout=20, message="warm"
        )
        # Let the pooled keep-alive connections of the warm-up go (watches reopened every IDLE
        # seconds use them up, the pool's keep-alive timeout closes the rest): from then on the
        # only open connections are watch streams, and those are what goes silent. The pool
        # sweeps idle connections once per keep-alive period (15 s), so one may live for two.
        await eventually(
            lambda: proxy.open_connections <= WATCHES,
            timeout=60,
            message=lambda: f"{proxy.open_connections} connections open",
        )
        proxy.blackhole()
        silenced = time.monotonic()
        idle_before = len(mgr.log_lines("informer.watch_idle"))
        name = f"s{uid}-during"
        await kube.create(TENANTS, tenant_body(name, system_ns))
        await eventually(
            lambda: _phase(kube, name, system_ns, "Ready"),
            timeout=IDLE + SLACK,
            interval=0.1,
            message=lambda: f"Ready during the blackhole; manager log: {mgr.log_tail()}",
        )
        took = time.monotonic() - silenced
        print(f"Ready {took:.2f}s after the blackhole (idle timeout {IDLE}s)")
        assert len(mgr.log_lines("informer.watch_idle")) > idle_before
        assert took < IDLE + SLACK, took
    finally:
        code = await mgr.stop()
        await proxy.stop()
        await purge(kube, system_ns)
    assert code == 0, mgr.log_tail()


async def test_rewatch_over_a_dead_pooled_connection_does_not_hang(
    envtest: Environment, kube: Client, namespace: str
) -> None:
    """Every connection goes silent, the idle keep-alive ones of the pool included.

    Reopening the watch may pick a pooled connection that is dead too; the wait for its
    response headers must be bounded by the idle timeout as well, or the informer hangs for
    good while looking alive (a zombie, kopf #1145).
    """
    proxy = FaultProxy("127.0.0.1", apiserver_port(envtest))
    await proxy.start()
    cfg = await envtest.client_configuration()
    cfg.host = proxy.url
    idle = 1.0
    async with k8s_client.ApiClient(cfg) as api:
        client = Client(api)
        inf = Informer(client, CONFIGMAPS, namespace=namespace, options=InformerOptions(idle))
        inf.start()
        try:
            await asyncio.wait_for(inf.wait_for_sync(), 10)
            # Parallel reads leave a few keep-alive connections in the client's pool.
            await asyncio.gather(*(client.list(CONFIGMAPS, namespace) for _ in range(3)))
            proxy.blackhole()
            start = time.monotonic()
            await kube.create(CONFIGMAPS, {"metadata": {"name": "after", "namespace": namespace}})
            await eventually(
                lambda: inf.get("after", namespace) is not None,
                timeout=15,
                interval=0.1,
                message=lambda: f"informer stuck: {inf.stats}",
            )
            # One idle timeout per dead connection tried, at most the pool plus the stream.
            assert time.monotonic() - start < idle * (3 + 1) + SLACK
        finally:
            await inf.stop()
            await client.close()
            await proxy.stop()


async def _phase(kube: Client, name: str, ns: str, want: str) -> bool:
    return phase_of(await kube.get_or_none(TENANTS, name, ns)) == want
