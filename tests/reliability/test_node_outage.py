"""Case 6: the tenant's node goes away and comes back, twice; an agent is deleted meanwhile.

Agents turn Failed (NodeUnavailable) while the node is down and Running again on their own
once it answers. Deleting
an agent while the node is down completes: the finalizer never waits for a dead node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment

from ..support.faults import NexusManager, agent_body, eventually, phase_of, tenant_body
from ..support.node import AstromeshNode
from .conftest import make_system_namespace, purge, short_id

pytestmark = pytest.mark.cluster

FLAPS = 2


async def test_agents_follow_a_flapping_node_and_deletion_never_hangs(
    envtest: Environment, kube: Client, node: AstromeshNode, tmp_path: Path
) -> None:
    system_ns = await make_system_namespace(kube, "outage")
    tenant = f"o{short_id()}"
    agents = [f"{tenant}-a{i}" for i in range(3)]
    mgr = NexusManager(
        envtest.kubeconfig_path,
        tmp_path / "mgr",
        node_url=node.url,
        # A converged agent asks its node once per resync: that is how an outage is noticed.
        extra=[f"--namespace={system_ns}", "--error-requeue=1", "--resync-period=1"],
    )

    async def phases() -> dict[str, str | None]:
        return {a: phase_of(await kube.get_or_none(AGENTS, a, tenant)) for a in agents}

    def all_in(phase: str, names: list[str]) -> object:
        async def probe() -> bool:
            current = await phases()
            return all(current[a] == phase for a in names)

        return probe

    try:
        await mgr.start()
        await kube.create(TENANTS, tenant_body(tenant, system_ns))
        await eventually(
            lambda: _tenant_ready(kube, tenant, system_ns), timeout=20, message="tenant"
        )
        for a in agents:
            await kube.create(AGENTS, agent_body(a, tenant))
        await eventually(all_in("Running", agents), timeout=20, message="agents Running")

        for flap in range(FLAPS):
            await node.stop()
            await eventually(all_in("Failed", agents), timeout=15, message=f"flap {flap}: Failed")
            failed = await kube.get(AGENTS, agents[0], tenant)
            assert failed["status"]["nodeAck"] is False
            ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "NodeUnavailable", ready
            await node.start()
            await eventually(all_in("Running", agents), timeout=20, message=f"flap {flap}: Running")
            assert await node.agents() == dict.fromkeys(agents, "deployed")

        # Deleting an agent while its node is down.
        await node.stop()
        await kube.delete(AGENTS, agents[0], tenant)
        await eventually(
            lambda: _gone(kube, agents[0], tenant),
            timeout=15,
            message=lambda: f"deletion hangs; manager log: {mgr.log_tail()}",
        )
        await node.start()
        await eventually(all_in("Running", agents[1:]), timeout=20, message="agents Running")
        on_node = await node.agents()
        assert {a: on_node.get(a) for a in agents[1:]} == dict.fromkeys(agents[1:], "deployed")
        # Not asserted: agents[0] is absent from the node. The node keeps agents in its config
        # dir, so one deleted while the node was down comes back with it (the finalizer treats
        # "connection refused" as done, per the node contract), and nothing removes it later.
    finally:
        code = await mgr.stop()
        await purge(kube, system_ns)
    assert code == 0, mgr.log_tail()


async def _tenant_ready(kube: Client, name: str, ns: str) -> bool:
    return phase_of(await kube.get_or_none(TENANTS, name, ns)) == "Ready"


async def _gone(kube: Client, name: str, ns: str) -> bool:
    return await kube.get_or_none(AGENTS, name, ns) is None
