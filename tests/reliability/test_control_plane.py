"""Cases 2 and 3: the control plane misbehaves under a running `nexus manager`.

Own control plane for this module (these tests kill kube-apiserver and compact etcd), with the
watch cache off so that a compacted resourceVersion reaches etcd and yields 410 Gone, as on a
busy cluster, and with kube-controller-manager so that deleted namespaces really go away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.domain.resources import TENANTS
from nexus.runtime.client import ApiError, Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import CONFIGMAPS, DEPLOYMENTS, NAMESPACES

from ..conftest import NEXUS_CRDS
from ..support.faults import (
    NexusManager,
    apiserver_port,
    bounded,
    eventually,
    phase_of,
    restart_apiserver,
    tenant_body,
    write_kubeconfig,
)
from ..support.tcpproxy import TcpProxy
from .conftest import make_system_namespace, short_id

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
async def cp_env() -> AsyncIterator[Environment]:
    async with Environment(
        crd_paths=[NEXUS_CRDS],
        with_controller_manager=True,
        extra_apiserver_flags=["--watch-cache=false"],
    ) as env:
        yield env


@pytest.fixture(scope="module")
async def cp_api(cp_env: Environment) -> AsyncIterator[k8s_client.ApiClient]:
    async with await cp_env.api_client() as api:
        yield api


@pytest.fixture(scope="module")
async def cp_kube(cp_api: k8s_client.ApiClient) -> AsyncIterator[Client]:
    client = Client(cp_api)
    yield client
    await client.close()


async def ready(kube: Client, ns: str) -> set[str]:
    items, _ = await kube.list_all(TENANTS, ns)
    return {t["metadata"]["name"] for t in items if phase_of(t) == "Ready"}


async def retrying(call: Any, attempts: int = 20) -> Any:
    """A test-side write right after a restart: the first tries may meet dead connections."""
    for attempt in range(attempts):
        try:
            return await call()
        except OSError:  # ConnectionError included
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)
        except ApiError as exc:
            if exc.status < 500 or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)
    return None


# -- case 2 -------------------------------------------------------------------------------------


async def test_apiserver_killed_mid_provisioning_converges_and_misses_nothing(
    cp_env: Environment, cp_kube: Client, tmp_path: Path
) -> None:
    kube = cp_kube
    system_ns = await make_system_namespace(kube, "restart")
    uid = short_id()
    before = [f"r{uid}-{i:03}" for i in range(100)]
    after = [f"r{uid}-after-{i}" for i in range(10)]
    await bounded(before, lambda n: kube.create(TENANTS, tenant_body(n, system_ns)), 32)
    mgr = NexusManager(cp_env.kubeconfig_path, tmp_path / "mgr", extra=[f"--namespace={system_ns}"])
    await mgr.start()
    try:
        await eventually(
            lambda: _at_least(kube, system_ns, 30), timeout=45, interval=0.05, message="30 Ready"
        )
        ready_at_kill = len(await ready(kube, system_ns))
        await restart_apiserver(cp_env, kill=True)
        # Right after the restart, likely before the manager's watches are back.
        await bounded(
            after, lambda n: retrying(lambda: kube.create(TENANTS, tenant_body(n, system_ns))), 10
        )
        assert ready_at_kill < len(before), "killed too late to mean anything"
        await eventually(
            lambda: _at_least(kube, system_ns, len(before) + len(after)),
            timeout=45,
            message=lambda: f"all Ready after the restart; manager log: {mgr.log_tail()}",
        )
        assert mgr.log_lines("informer.retry"), "the manager never noticed the outage"
    finally:
        assert await mgr.stop() == 0, mgr.log_tail()


# -- case 3 -------------------------------------------------------------------------------------


async def test_compaction_while_cut_off_relists_and_converges(
    cp_env: Environment, cp_kube: Client, tmp_path: Path
) -> None:
    kube = cp_kube
    system_ns = await make_system_namespace(kube, "compact")
    uid = short_id()
    kept, deleted, edited = (f"k{uid}-{s}" for s in ("kept", "deleted", "edited"))
    proxy = TcpProxy("127.0.0.1", apiserver_port(cp_env))
    await proxy.start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", proxy.url, cp_env.token)
    mgr = NexusManager(kubeconfig, tmp_path / "mgr", extra=[f"--namespace={system_ns}"])
    try:
        for name in (kept, deleted, edited):
            await kube.create(TENANTS, tenant_body(name, system_ns))
        await mgr.start()
        await eventually(lambda: _at_least(kube, system_ns, 3), timeout=30, message="3 Ready")

        proxy.cut()  # the manager is disconnected from here on
        newcomers = [f"k{uid}-new-{i}" for i in range(3)]
        for name in newcomers:
            await kube.create(TENANTS, tenant_body(name, system_ns))
        await kube.delete(TENANTS, deleted, system_ns)
        await kube.patch(TENANTS, edited, {"spec": {"resourceQuota": {"cpu": "3"}}}, system_ns)
        for i in range(20):  # move the revision well past what the manager holds
            await kube.create(CONFIGMAPS, {"metadata": {"name": f"churn-{i}", "namespace": kept}})
            await kube.delete(CONFIGMAPS, f"churn-{i}", kept)
        await cp_env.compact_etcd()
        proxy.restore()

        await eventually(
            lambda: _relisted(mgr),
            timeout=40,
            message=lambda: f"no 410 relist; manager log: {mgr.log_tail()}",
        )
        await eventually(
            lambda: _at_least_named(kube, system_ns, {kept, edited, *newcomers}),
            timeout=30,
            message="newcomers Ready",
        )
        await eventually(
            lambda: _limit_is(kube, edited, "3"), timeout=30, message="edited quota applied"
        )
        await eventually(
            lambda: _gone(kube, deleted, system_ns), timeout=45, message="deleted tenant cleaned up"
        )
    finally:
        code = await mgr.stop()
        await proxy.stop()
    assert code == 0, mgr.log_tail()


async def _at_least(kube: Client, ns: str, n: int) -> bool:
    return len(await ready(kube, ns)) >= n


async def _at_least_named(kube: Client, ns: str, names: set[str]) -> bool:
    return names <= await ready(kube, ns)


async def _relisted(mgr: NexusManager) -> bool:
    return any("410 Gone" in line for line in mgr.log_lines("informer.relist"))


async def _limit_is(kube: Client, tenant: str, cpu: str) -> bool:
    dep = await kube.get_or_none(DEPLOYMENTS, "astromesh-node", tenant)
    if dep is None:
        return False
    limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    return bool(limits.get("cpu") == cpu)


async def _gone(kube: Client, tenant: str, ns: str) -> bool:
    return (
        await kube.get_or_none(TENANTS, tenant, ns) is None
        and await kube.get_or_none(NAMESPACES, tenant) is None
    )
