"""Case 1: `nexus manager` SIGKILLed while provisioning; a new one finishes the job exactly once.

200 tenants, 5 of which get 2 agents each on a real node. The node sits behind a counting HTTP
proxy: its API is an upsert, so "deployed twice" is only visible as a second deploy request.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from nexus.domain.resources import AGENTS, TENANT_LABEL, TENANT_NAMESPACE_LABEL, TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import DEPLOYMENTS, NAMESPACES, SERVICES

from ..support.faults import (
    CountingHttpProxy,
    NexusManager,
    agent_body,
    bounded,
    eventually,
    phase_of,
    tenant_body,
)
from ..support.node import AstromeshNode
from .conftest import make_system_namespace, short_id

pytestmark = pytest.mark.cluster

TENANTS_TOTAL = 200
KILL_AT = TENANTS_TOTAL // 3
AGENT_TENANTS = (10, 60, 70, 120, 190)  # spread, so that both managers deploy some
AGENTS_PER_TENANT = 2


@pytest.fixture
async def counted_node(node: AstromeshNode) -> AsyncIterator[CountingHttpProxy]:
    proxy = CountingHttpProxy(node.url)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def ready_names(kube: Client, ns: str) -> set[str]:
    items, _ = await kube.list_all(TENANTS, ns)
    return {t["metadata"]["name"] for t in items if phase_of(t) == "Ready"}


async def create_agents_when_namespaces_exist(kube: Client, tenants: list[str]) -> None:
    async def one(tenant: str) -> None:
        await eventually(
            lambda: kube.get_or_none(NAMESPACES, tenant), timeout=60, interval=0.1, message=tenant
        )
        for j in range(AGENTS_PER_TENANT):
            await kube.create(AGENTS, agent_body(f"{tenant}-bot{j}", tenant))

    await asyncio.gather(*(one(t) for t in tenants))


async def test_sigkill_mid_provisioning_converges_exactly_once(
    bulk_env: Environment,
    bulk_kube: Client,
    counted_node: CountingHttpProxy,
    node: AstromeshNode,
    tmp_path: Path,
) -> None:
    kube = bulk_kube
    system_ns = await make_system_namespace(kube, "crash")
    uid = short_id()
    names = [f"c{uid}-{i:03}" for i in range(TENANTS_TOTAL)]
    await bounded(names, lambda n: kube.create(TENANTS, tenant_body(n, system_ns)), 32)
    with_agents = [names[i] for i in AGENT_TENANTS]
    agent_names = [f"{t}-bot{j}" for t in with_agents for j in range(AGENTS_PER_TENANT)]

    def manager(tag: str) -> NexusManager:
        return NexusManager(
            bulk_env.kubeconfig_path,
            tmp_path / tag,
            node_url=counted_node.url,
            extra=[f"--namespace={system_ns}"],
        )

    first = manager("first")
    await first.start()
    agents_created = asyncio.create_task(create_agents_when_namespaces_exist(kube, with_agents))
    await eventually(
        lambda: _at_least(kube, system_ns, KILL_AT), timeout=45, interval=0.05, message="1/3 Ready"
    )
    await first.stop(signal.SIGKILL)
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    ready_at_kill = len(await ready_names(kube, system_ns))
    assert ready_at_kill < TENANTS_TOTAL * 2 // 3, "killed too late to mean anything"
    print(f"SIGKILL with {ready_at_kill}/{TENANTS_TOTAL} tenants Ready")

    second = manager("second")
    await second.start()
    try:
        await eventually(
            lambda: _at_least(kube, system_ns, TENANTS_TOTAL),
            timeout=45,
            message=lambda: f"Ready after restart; second manager log: {second.log_tail()}",
        )
        await agents_created

        async def agents_running() -> bool:
            for name in agent_names:
                agent = await kube.get_or_none(AGENTS, name, name.rsplit("-", 1)[0])
                if phase_of(agent) != "Running":
                    return False
            return True

        await eventually(agents_running, timeout=30, message="agents Running")
    finally:
        code = await second.stop()
    assert code == 0, second.log_tail()

    # Each tenant has exactly one of each child, labelled for it, and nothing is orphaned.
    selector = f"{TENANT_NAMESPACE_LABEL}={system_ns}"
    for res in (NAMESPACES, DEPLOYMENTS, SERVICES):
        items, _ = await kube.list_all(res, label_selector=selector)
        per_tenant = Counter(i["metadata"]["labels"][TENANT_LABEL] for i in items)
        assert set(per_tenant) == set(names), f"{res.kind}: orphans or missing children"
        assert set(per_tenant.values()) == {1}, f"{res.kind}: duplicates {per_tenant}"
    # No orphan anywhere: every namespace labelled for a tenant belongs to an existing one.
    every_tenant, _ = await kube.list_all(TENANTS)
    existing = {(t["metadata"]["namespace"], t["metadata"]["name"]) for t in every_tenant}
    labelled, _ = await kube.list_all(NAMESPACES, label_selector=TENANT_LABEL)
    orphans = [
        ns["metadata"]["name"]
        for ns in labelled
        if (
            ns["metadata"]["labels"].get(TENANT_NAMESPACE_LABEL),
            ns["metadata"]["labels"][TENANT_LABEL],
        )
        not in existing
    ]
    assert not orphans, orphans
    tenants = [t for t in every_tenant if t["metadata"]["namespace"] == system_ns]
    assert len(tenants) == TENANTS_TOTAL
    for t in tenants:
        name = t["metadata"]["name"]
        assert t["status"]["namespace"] == name
        assert t["status"]["nodeEndpoint"] == f"http://astromesh-node.{name}.svc:8000"

    # Each agent is on the node exactly once, deployed, and was deployed exactly once.
    async with aiohttp.ClientSession() as s, s.get(f"{node.url}/v1/agents") as r:
        listed = [a["name"] for a in (await r.json())["agents"]]
    assert sorted(n for n in listed if n in agent_names) == sorted(agent_names), listed
    on_node = await node.agents()
    assert {a: on_node.get(a) for a in agent_names} == dict.fromkeys(agent_names, "deployed")
    deploys = {a: counted_node.count("POST", f"/v1/agents/{a}/deploy") for a in agent_names}
    assert deploys == dict.fromkeys(agent_names, 1), deploys


async def _at_least(kube: Client, ns: str, n: int) -> bool:
    return len(await ready_names(kube, ns)) >= n
