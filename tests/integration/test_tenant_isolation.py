"""One node per tenant, for real: each tenant's agents live on its own astromesh process.

A real `nexus manager` (``--node-endpoint=pod``, waiting for nodes) and the local node agent,
which runs each tenant's ``astromesh-node`` pod as its own process on its own 127.x address.
Users act through the REST API as new users would; what landed where is checked on the node
processes themselves, so that "the other tenant's agent did not change" is a fact about a
separate process, not about a shared one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus.domain.resources import AGENTS, NODE_AVAILABLE, TENANTS, WAITING_FOR_NODE
from nexus.localnode import REASON_CAPACITY
from nexus.runtime.client import Client
from nexus.runtime.resource import EVENTS, NAMESPACES, PODS

from ..support.faults import eventually
from ..support.tenantnodes import TenantNodes
from ..support.tenants import Account, agent_spec, description, node_agent, node_agents

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

Object = dict[str, Any]
SHARED = "shared-name"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


def condition(obj: Object | None, type_: str) -> Object:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            found: Object = c
            return found
    return {}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def answers(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s,
            s.get(f"{url}/v1/health") as r,
        ):
            return r.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def gone(tn: TenantNodes, account: Account, timeout: float = 90.0) -> None:
    """Delete the account's tenant and wait until its node process has gone."""
    await account.delete_tenant()
    if account.namespace:
        await eventually(lambda: not tn.nodes_of(account.namespace), timeout=timeout)


async def test_same_named_agents_of_two_tenants_live_apart_on_their_own_nodes(
    tenant_nodes: TenantNodes, kube: Client, http: aiohttp.ClientSession
) -> None:
    tn = tenant_nodes
    a, b = await asyncio.gather(
        Account.open(http, tn.url, "Alpha"), Account.open(http, tn.url, "Beta")
    )
    try:
        ns_a, ns_b = await asyncio.gather(a.wait_ready(), b.wait_ready())
        assert ns_a != ns_b
        node_a, node_b = tn.node_of(ns_a), tn.node_of(ns_b)
        # Ready means the node answers: its process was up before the tenant was Ready.
        assert node_a is not None and node_b is not None
        assert node_a.pid != node_b.pid and node_a.ip != node_b.ip
        assert node_a.workdir != node_b.workdir
        assert await answers(node_a.url) and await answers(node_b.url)

        # Create: same name, different specs, each on its own node only.
        await a.create_agent(agent_spec(SHARED, description="alpha v1"))
        await b.create_agent(agent_spec(SHARED, description="beta v1"))
        await asyncio.gather(a.wait_agent(SHARED), b.wait_agent(SHARED))
        assert description(await node_agent(node_a.url, SHARED)) == "alpha v1"
        assert description(await node_agent(node_b.url, SHARED)) == "beta v1"
        assert await node_agents(node_a.url) == {SHARED: "deployed"}
        assert await node_agents(node_b.url) == {SHARED: "deployed"}
        b_generation = (await kube.get(AGENTS, SHARED, ns_b))["metadata"]["generation"]

        # Update A: A's node follows, B's node and B's object do not move.
        await a.update_agent(agent_spec(SHARED, description="alpha v2", model="llama3.2:3b"))

        async def a_updated() -> bool:
            return description(await node_agent(node_a.url, SHARED)) == "alpha v2"

        await eventually(a_updated, timeout=60)
        await a.wait_agent(SHARED)
        b_node = await node_agent(node_b.url, SHARED)
        assert description(b_node) == "beta v1"
        assert b_node is not None
        assert b_node["spec"]["model"]["primary"]["model"] == "llama3.1:8b"
        assert (await kube.get(AGENTS, SHARED, ns_b))["metadata"]["generation"] == b_generation

        # Suspend A (the kubectl path): paused on A's node, still deployed on B's.
        await kube.patch(AGENTS, SHARED, {"spec": {"suspend": True}}, ns_a)
        await a.wait_agent(SHARED, "Stopped")

        async def a_paused() -> bool:
            return (await node_agents(node_a.url)).get(SHARED) == "paused"

        await eventually(a_paused, timeout=60)
        assert await node_agents(node_b.url) == {SHARED: "deployed"}
        assert ((await b.agent(SHARED)) or {})["status"]["phase"] == "Running"
        await kube.patch(AGENTS, SHARED, {"spec": {"suspend": False}}, ns_a)
        await a.wait_agent(SHARED)
        assert await node_agents(node_a.url) == {SHARED: "deployed"}

        # Delete A's: gone from A's node; B's stays, untouched and running.
        await a.delete_agent(SHARED)

        async def a_deleted() -> bool:
            return await a.agent(SHARED) is None and await node_agent(node_a.url, SHARED) is None

        await eventually(a_deleted, timeout=60)
        await asyncio.sleep(1.0)  # a stray delete on B's node would have happened by now
        assert description(await node_agent(node_b.url, SHARED)) == "beta v1"
        assert await node_agents(node_b.url) == {SHARED: "deployed"}
        assert ((await b.agent(SHARED)) or {})["status"]["phase"] == "Running"
        await b.delete_agent(SHARED)

        async def b_deleted() -> bool:
            return await node_agent(node_b.url, SHARED) is None

        await eventually(b_deleted, timeout=60)
        # The same processes served it all: nothing was restarted to keep them apart.
        assert [n.pid for n in tn.nodes_of(ns_a)] == [node_a.pid]
        assert [n.pid for n in tn.nodes_of(ns_b)] == [node_b.pid]
    finally:
        await asyncio.gather(gone(tn, a), gone(tn, b), return_exceptions=True)


async def test_a_deleted_tenant_takes_its_node_process_and_files_with_it(
    tenant_nodes: TenantNodes, kube: Client, http: aiohttp.ClientSession
) -> None:
    tn = tenant_nodes
    acct = await Account.open(http, tn.url, "Doomed")
    ns = await acct.wait_ready()
    node = tn.node_of(ns)
    assert node is not None and node.pid is not None
    await acct.create_agent(agent_spec("soon-gone"))
    await acct.wait_agent("soon-gone")
    assert node.workdir.is_dir() and (node.workdir / "node.log").exists()
    pid, workdir, url = node.pid, node.workdir, node.url

    await acct.delete_tenant()

    async def cleaned_up() -> bool:
        return (
            not alive(pid)
            and not workdir.exists()
            and not tn.nodes_of(ns)
            and await kube.get_or_none(NAMESPACES, ns) is None
        )

    await eventually(cleaned_up, timeout=120)
    assert not await answers(url)
    assert await kube.get_or_none(TENANTS, ns, tn.namespace) is None


async def test_beyond_the_cap_a_tenant_stays_provisioning_and_its_agents_pending(
    tenant_nodes: TenantNodes, kube: Client, http: aiohttp.ClientSession
) -> None:
    tn = tenant_nodes
    await eventually(lambda: not tn.agent.pods(), timeout=90)  # what earlier tests left goes
    cap = tn.agent.config.max_pods
    fillers = [await Account.open(http, tn.url, f"Filler {i}") for i in range(cap)]
    extra: Account | None = None
    try:
        await asyncio.gather(*(f.wait_ready() for f in fillers))
        assert len(tn.agent.pods()) == cap

        extra = await Account.open(http, tn.url, "One Too Many")
        body = await extra.wait_tenant(lambda b: bool(b.get("namespace")))
        ns = extra.namespace = body["namespace"]

        async def unschedulable() -> Object | None:
            items, _ = await kube.list_all(PODS, ns)
            for pod in items:
                cond = condition(pod, "PodScheduled")
                if cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                    return pod
            return None

        pod = await eventually(unschedulable, timeout=90)
        assert f"cap of {cap}" in condition(pod, "PodScheduled")["message"]
        events, _ = await kube.list_all(EVENTS, ns)
        assert REASON_CAPACITY in {e.get("reason") for e in events}

        await extra.create_agent(agent_spec("waiting-bot"))

        async def agent_waits() -> Object | None:
            cr = await kube.get_or_none(AGENTS, "waiting-bot", ns)
            ready = condition(cr, "Ready")
            pending = cr is not None and (cr.get("status") or {}).get("phase") == "Pending"
            return cr if pending and ready.get("reason") == WAITING_FOR_NODE else None

        await eventually(agent_waits, timeout=60)
        # And it stays so: nothing deploys it, nothing fails it, the tenant is not Ready.
        await asyncio.sleep(5)
        tenant = await kube.get(TENANTS, ns, tn.namespace)
        assert tenant["status"]["phase"] == "Provisioning", tenant["status"]
        node_cond = condition(tenant, NODE_AVAILABLE)
        assert node_cond.get("status") == "False", tenant["status"]
        assert node_cond.get("reason") and node_cond.get("message"), node_cond
        assert condition(tenant, "Ready").get("reason") == WAITING_FOR_NODE
        api_view = await extra.tenant_status()
        assert api_view["phase"] == "Provisioning", api_view
        assert api_view.get("nodeAvailable") is False, api_view
        assert (await extra.agent("waiting-bot") or {})["status"]["phase"] == "Pending"
        assert await agent_waits() is not None
        assert not tn.nodes_of(ns)

        # A slot frees: the waiting tenant's pod gets it at once, the tenant becomes Ready and
        # its agent is deployed on its own new node.
        t0 = time.monotonic()
        await gone(tn, fillers.pop())
        await extra.wait_ready()
        await extra.wait_agent("waiting-bot")
        node = tn.node_of(ns)
        assert node is not None
        assert await node_agents(node.url) == {"waiting-bot": "deployed"}
        assert time.monotonic() - t0 < 120
    finally:
        accounts = [*fillers, *([extra] if extra else [])]
        await asyncio.gather(*(gone(tn, acct) for acct in accounts), return_exceptions=True)
