"""A node outage is visible to alerting: while the tenant's node is down, the agent
controller's ``controller_runtime_reconcile_errors_total`` rises on ``/metrics``; it is flat
while the node answers. Real `nexus manager` process, real control plane, real node.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES, Resource

from ..support.faults import NexusManager, agent_body, eventually, phase_of, tenant_body
from ..support.node import AstromeshNode

pytestmark = pytest.mark.cluster

#: The agent controller's name: the ``controller`` label that alerts select on.
AGENT_CONTROLLER = "nexusagent"
RETRY = 1  # --error-requeue: the fixed retry of a failed reconcile (s)


async def test_node_down_raises_the_agent_controllers_reconcile_errors_on_metrics(
    envtest: Environment, kube: Client, tmp_path: Path
) -> None:
    system_ns = f"outage-{uuid.uuid4().hex[:6]}"
    tenant = f"m{uuid.uuid4().hex[:6]}"
    agent = f"{tenant}-a"
    await kube.create(NAMESPACES, {"metadata": {"name": system_ns}})
    node = AstromeshNode()
    await node.start()
    mgr = NexusManager(
        envtest.kubeconfig_path,
        tmp_path / "mgr",
        node_url=node.url,
        # A converged agent asks its node once per resync: that is how an outage is noticed.
        extra=[f"--namespace={system_ns}", f"--error-requeue={RETRY}", "--resync-period=1"],
    )

    async def errors() -> float:
        m = await mgr.metrics()
        return m.value("controller_runtime_reconcile_errors_total", controller=AGENT_CONTROLLER)

    async def agent_phase() -> str | None:
        return phase_of(await kube.get_or_none(AGENTS, agent, tenant))

    try:
        await mgr.start()
        await kube.create(TENANTS, tenant_body(tenant, system_ns))
        await eventually(
            lambda: _phase(kube, TENANTS, tenant, system_ns, "Ready"), timeout=30, message="tenant"
        )
        await kube.create(AGENTS, agent_body(agent, tenant))
        await eventually(
            lambda: _phase(kube, AGENTS, agent, tenant, "Running"), timeout=30, message="Running"
        )

        # Healthy: several resyncs ask the node, and the error counter does not move.
        before = await errors()
        await asyncio.sleep(3 * RETRY + 0.5)
        assert await errors() == before

        # The node goes down: every retry of the Failed agent is an error.
        await node.stop()
        await eventually(
            lambda: _phase(kube, AGENTS, agent, tenant, "Failed"), timeout=20, message="Failed"
        )
        failed = await kube.get(AGENTS, agent, tenant)
        ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "NodeUnavailable", ready

        async def risen() -> bool:
            return await errors() >= before + 3

        await eventually(
            risen,
            timeout=20,
            message=lambda: f"errors stayed at {before}; manager log: {mgr.log_tail()}",
        )
        m = await mgr.metrics()
        assert (
            m.value(
                "controller_runtime_reconcile_total", controller=AGENT_CONTROLLER, result="error"
            )
            >= 3
        )
        assert await agent_phase() == "Failed"

        # Back up: the agent recovers on its own and the counter is flat again.
        await node.start()
        await eventually(
            lambda: _phase(kube, AGENTS, agent, tenant, "Running"), timeout=30, message="recovery"
        )
        settled = await errors()
        await asyncio.sleep(3 * RETRY + 0.5)
        assert await errors() == settled
    finally:
        # Deleted while the manager runs, so that the finalizers complete.
        await kube.delete(AGENTS, agent, tenant, ignore_not_found=True)
        await kube.delete(TENANTS, tenant, system_ns, ignore_not_found=True)
        try:
            await eventually(
                lambda: _gone(kube, TENANTS, tenant, system_ns), timeout=60, message="cleanup"
            )
        finally:
            code = await mgr.stop()
            await node.stop()
            await kube.delete(NAMESPACES, system_ns, ignore_not_found=True)
    assert code == 0, mgr.log_tail()


async def _phase(kube: Client, res: Resource, name: str, ns: str, phase: str) -> bool:
    return phase_of(await kube.get_or_none(res, name, ns)) == phase


async def _gone(kube: Client, res: Resource, name: str, ns: str) -> bool:
    return await kube.get_or_none(res, name, ns) is None
