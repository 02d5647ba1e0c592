"""NexusTenant and NexusAgent reconcilers: real apiserver + controller-manager, real node."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s_client
from prometheus_client import REGISTRY

from nexus.app import build_manager
from nexus.domain.resources import (
    AGENT_FINALIZER,
    AGENTS,
    MANAGED_LABEL,
    TENANT_FINALIZER,
    TENANT_LABEL,
    TENANTS,
)
from nexus.runtime import Manager
from nexus.runtime.client import Client
from nexus.runtime.resource import DEPLOYMENTS, EVENTS, NAMESPACES, SERVICES
from nexus.settings import ManagerSettings

from ..conftest import ROOT
from ..support.faults import agent_body
from ..support.node import AstromeshNode

pytestmark = pytest.mark.cluster

SYSTEM_NS = "nexus-system"


@pytest.fixture(scope="module")
async def node() -> AsyncIterator[AstromeshNode]:
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


def nexus_settings(node: AstromeshNode) -> ManagerSettings:
    return ManagerSettings(
        metrics_bind_address="0",
        health_probe_bind_address="0",
        api_bind_address="0",
        node_endpoint=node.url,
        # One shared node process and no kubelet: Ready when the objects exist.
        wait_for_node=False,
        node_image="astromesh/node:test",
        resync_period=60.0,
        error_requeue=1.0,
        namespace=SYSTEM_NS,
    )


@pytest.fixture(scope="module")
async def nexus(
    api_client: k8s_client.ApiClient, kube: Client, node: AstromeshNode
) -> AsyncIterator[Manager]:
    if await kube.get_or_none(NAMESPACES, SYSTEM_NS) is None:
        await kube.create(NAMESPACES, {"metadata": {"name": SYSTEM_NS}})
    mgr = build_manager(api_client, nexus_settings(node))
    await mgr.start()
    yield mgr
    await mgr.stop()


async def wait_for(
    kube: Client, res: Any, name: str, ns: str | None, pred: Any, *, timeout: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = await kube.get_or_none(res, name, ns)
        if last is not None and pred(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{res.kind} {ns}/{name} not as expected: {last!r}"[:3000])


async def wait_gone(
    kube: Client, res: Any, name: str, ns: str | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await kube.get_or_none(res, name, ns) is None:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{res.kind} {ns}/{name} still exists")


def phase(p: str) -> Any:
    return lambda o: (o.get("status") or {}).get("phase") == p


def tenant_body(name: str, max_agents: int = 10, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": SYSTEM_NS},
        "spec": {
            "displayName": f"Tenant {name}",
            "nodeProfile": "full",
            "resourceQuota": {"maxAgents": max_agents, "cpu": "2", "memory": "4Gi"},
            **spec,
        },
    }


def uid() -> str:
    return uuid.uuid4().hex[:8]


async def ready_tenant(kube: Client, name: str, **kw: Any) -> dict[str, Any]:
    await kube.create(TENANTS, tenant_body(name, **kw))
    return await wait_for(kube, TENANTS, name, SYSTEM_NS, phase("Ready"))


async def test_tenant_lifecycle_and_object_shapes(nexus: Manager, kube: Client) -> None:
    name = f"tenant-{uid()}"
    tenant = await ready_tenant(kube, name)
    st = tenant["status"]
    assert st["namespace"] == name
    assert st["nodeEndpoint"] == f"http://astromesh-node.{name}.svc:8000"
    assert st["agentCount"] == 0
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert TENANT_FINALIZER in tenant["metadata"]["finalizers"]

    ns = await kube.get(NAMESPACES, name)
    assert ns["metadata"]["labels"][MANAGED_LABEL] == "true"
    assert ns["metadata"]["labels"][TENANT_LABEL] == name

    dep = await kube.get(DEPLOYMENTS, "astromesh-node", name)
    assert dep["spec"]["replicas"] == 1
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "astromesh/node:test"
    assert c["ports"][0]["containerPort"] == 8000
    assert c["livenessProbe"]["httpGet"]["path"] == "/v1/health"
    assert c["readinessProbe"]["httpGet"]["port"] == 8000
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert {"name": "ASTROMESH_ROLE", "value": "full"} in c["env"]

    svc = await kube.get(SERVICES, "astromesh-node", name)
    assert svc["spec"]["ports"][0]["port"] == 8000
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

    await nexus.event_recorder("nexustenant-controller").flush()
    events, _ = await kube.list_all(EVENTS, SYSTEM_NS)
    reasons = {e["reason"] for e in events if e["regarding"]["name"] == name}
    assert {"Provisioning", "Ready"} <= reasons

    await kube.delete(TENANTS, name, SYSTEM_NS)
    await wait_gone(kube, NAMESPACES, name)
    await wait_gone(kube, TENANTS, name, SYSTEM_NS)


async def test_agent_lifecycle_on_a_real_node(
    nexus: Manager, kube: Client, node: AstromeshNode
) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    aname = f"bot-{uid()}"
    await kube.create(AGENTS, agent_body(aname, tname))
    agent = await wait_for(kube, AGENTS, aname, tname, phase("Running"))
    assert agent["status"]["nodeAck"] is True
    assert agent["status"]["lastSyncedAt"]
    assert AGENT_FINALIZER in agent["metadata"]["finalizers"]
    assert (await node.agents())[aname] == "deployed"
    tenant = await wait_for(
        kube, TENANTS, tname, SYSTEM_NS, lambda t: t["status"].get("agentCount") == 1
    )
    assert tenant["status"]["agentCount"] == 1

    await kube.delete(AGENTS, aname, tname)
    await wait_gone(kube, AGENTS, aname, tname)
    assert aname not in await node.agents()
    await wait_for(kube, TENANTS, tname, SYSTEM_NS, lambda t: t["status"]["agentCount"] == 0)
    await kube.delete(TENANTS, tname, SYSTEM_NS)
    await wait_gone(kube, TENANTS, tname, SYSTEM_NS)


async def test_node_down_then_back(nexus: Manager, kube: Client, node: AstromeshNode) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    await node.stop()
    try:
        aname = f"bot-{uid()}"
        await kube.create(AGENTS, agent_body(aname, tname))
        failed = await wait_for(kube, AGENTS, aname, tname, phase("Failed"), timeout=15)
        assert failed["status"]["nodeAck"] is False
        assert "NodeUnavailable" in str(failed["status"]["conditions"])
    finally:
        await node.start()
    await wait_for(kube, AGENTS, aname, tname, phase("Running"), timeout=20)
    assert (await node.agents())[aname] == "deployed"
    # Deletion never hangs on a dead node.
    await node.stop()
    try:
        await kube.delete(AGENTS, aname, tname)
        await wait_gone(kube, AGENTS, aname, tname, timeout=20)
    finally:
        await node.start()
    await kube.delete(TENANTS, tname, SYSTEM_NS)


async def test_deleted_deployment_is_recreated_within_seconds(nexus: Manager, kube: Client) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    old = await kube.get(DEPLOYMENTS, "astromesh-node", tname)
    await kube.delete(DEPLOYMENTS, "astromesh-node", tname)
    start = time.monotonic()
    new = await wait_for(
        kube,
        DEPLOYMENTS,
        "astromesh-node",
        tname,
        lambda d: d["metadata"]["uid"] != old["metadata"]["uid"],
        timeout=10,
    )
    assert time.monotonic() - start < 5
    assert new["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8000
    # An edited Service is put back too.
    await kube.patch(
        SERVICES, "astromesh-node", {"spec": {"ports": [{"port": 9999, "name": "x"}]}}, tname
    )
    await wait_for(
        kube,
        SERVICES,
        "astromesh-node",
        tname,
        lambda s: s["spec"]["ports"][0]["port"] == 8000,
        timeout=10,
    )
    await kube.delete(TENANTS, tname, SYSTEM_NS)


def writes() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "rest_client_requests":
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels["method"] in (
                    "POST",
                    "PUT",
                    "PATCH",
                    "DELETE",
                ):
                    total += s.value
    return total


async def test_converged_objects_cause_no_writes_on_resync(
    api_client: k8s_client.ApiClient, kube: Client, node: AstromeshNode
) -> None:
    tname = f"tenant-{uid()}"
    aname = f"bot-{uid()}"
    # Same settings as the module's manager (two managers with different images would rightly
    # fight over the Deployment), but resyncing every 0.3 s.
    settings = nexus_settings(node).model_copy(update={"resync_period": 0.3})
    mgr = build_manager(api_client, settings)
    await mgr.start()
    try:
        await ready_tenant(kube, tname)
        await kube.create(AGENTS, agent_body(aname, tname))
        await wait_for(kube, AGENTS, aname, tname, phase("Running"))
        await wait_for(kube, TENANTS, tname, SYSTEM_NS, lambda t: t["status"]["agentCount"] == 1)
        await asyncio.sleep(1.0)  # let in-flight status writes and events settle
        for rec in ("nexustenant-controller", "nexusagent-controller"):
            await mgr.event_recorder(rec).flush()
        reconciles = sum(
            REGISTRY.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": c, "result": "requeue_after"}
            )
            or 0
            for c in ("nexustenant", "nexusagent")
        )
        before = writes()
        await asyncio.sleep(2.0)  # several resyncs of both objects
        after_reconciles = sum(
            REGISTRY.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": c, "result": "requeue_after"}
            )
            or 0
            for c in ("nexustenant", "nexusagent")
        )
        assert after_reconciles - reconciles >= 4, "resyncs did not happen"
        assert writes() == before, "a converged tenant/agent wrote to the API server"
        assert (await node.agents())[aname] == "deployed"
    finally:
        await mgr.stop()
    await kube.delete(AGENTS, aname, tname)
    await wait_gone(kube, AGENTS, aname, tname)
    await kube.delete(TENANTS, tname, SYSTEM_NS)


async def test_printer_columns(nexus: Manager, kube: Client) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    # What kubectl get prints: the server renders the CRD's printer columns as a Table.
    table = await kube.request(
        "GET",
        TENANTS.path(SYSTEM_NS, tname),
        accept="application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    cols = [c["name"] for c in table["columnDefinitions"]]
    assert cols[:6] == ["Name", "Phase", "Namespace", "Agents", "Node", "Age"]
    # No kubelet here (--no-wait-for-node): Ready, and the node is not available.
    assert table["rows"][0]["cells"][:5] == [tname, "Ready", tname, 0, "False"]
    await kube.delete(TENANTS, tname, SYSTEM_NS)


async def test_system_namespace_name_is_refused(nexus: Manager, kube: Client) -> None:
    await kube.create(TENANTS, tenant_body("kube-public"))
    bad = await wait_for(kube, TENANTS, "kube-public", SYSTEM_NS, phase("Error"))
    assert "system namespace" in bad["status"]["message"]
    assert not bad["metadata"].get("finalizers")
    ns = await kube.get(NAMESPACES, "kube-public")
    assert MANAGED_LABEL not in (ns["metadata"].get("labels") or {})
    await kube.delete(TENANTS, "kube-public", SYSTEM_NS)


async def test_max_agents_applies_to_kubectl_created_agents(nexus: Manager, kube: Client) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname, max_agents=1)
    await kube.create(AGENTS, agent_body("first", tname))
    await wait_for(kube, AGENTS, "first", tname, phase("Running"))
    await kube.create(AGENTS, agent_body("second", tname))
    second = await wait_for(kube, AGENTS, "second", tname, phase("Failed"))
    assert "exceeded quota: maxAgents=1" in second["status"]["message"]
    assert "QuotaExceeded" in str(second["status"]["conditions"])
    await kube.delete(AGENTS, "first", tname)
    await wait_for(kube, AGENTS, "second", tname, phase("Running"), timeout=20)
    await kube.delete(TENANTS, tname, SYSTEM_NS)
    await wait_gone(kube, NAMESPACES, tname)


async def test_suspend_stops_and_resumes(nexus: Manager, kube: Client, node: AstromeshNode) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    aname = f"bot-{uid()}"
    await kube.create(AGENTS, agent_body(aname, tname))
    await wait_for(kube, AGENTS, aname, tname, phase("Running"))
    await kube.patch(AGENTS, aname, {"spec": {"suspend": True}}, tname)
    await wait_for(kube, AGENTS, aname, tname, phase("Stopped"))
    assert (await node.agents())[aname] == "paused"
    await kube.patch(AGENTS, aname, {"spec": {"suspend": False}}, tname)
    await wait_for(kube, AGENTS, aname, tname, phase("Running"))
    assert (await node.agents())[aname] == "deployed"
    await kube.delete(TENANTS, tname, SYSTEM_NS)
    await wait_gone(kube, NAMESPACES, tname)
    assert aname not in await node.agents()


async def test_samples_apply_and_delete_leave_nothing(
    nexus: Manager, kube: Client, node: AstromeshNode
) -> None:
    samples = ROOT / "config" / "samples"
    tenant = yaml.safe_load(Path(samples / "nexus_v1alpha1_nexustenant.yaml").read_text())
    agent = yaml.safe_load(Path(samples / "nexus_v1alpha1_nexusagent.yaml").read_text())
    await kube.create(TENANTS, tenant)
    await wait_for(kube, TENANTS, "tenant-dev", SYSTEM_NS, phase("Ready"))
    await kube.create(AGENTS, agent)
    running = await wait_for(kube, AGENTS, "support-bot", "tenant-dev", phase("Running"))
    assert running["status"]["nodeAck"] is True
    assert (await node.agents())["support-bot"] == "deployed"

    await kube.delete(AGENTS, "support-bot", "tenant-dev")
    await kube.delete(TENANTS, "tenant-dev", SYSTEM_NS)
    await wait_gone(kube, TENANTS, "tenant-dev", SYSTEM_NS)
    await wait_gone(kube, NAMESPACES, "tenant-dev")
    assert "support-bot" not in await node.agents()
    leftovers, _ = await kube.list_all(AGENTS)
    assert not [a for a in leftovers if a["metadata"]["namespace"] == "tenant-dev"]


async def test_existing_foreign_namespace_is_not_taken_over(nexus: Manager, kube: Client) -> None:
    name = f"tenant-{uid()}"
    await kube.create(NAMESPACES, {"metadata": {"name": name, "labels": {"owner": "someone"}}})
    await kube.create(TENANTS, tenant_body(name))
    bad = await wait_for(kube, TENANTS, name, SYSTEM_NS, phase("Error"))
    assert "already exists and is not managed" in bad["status"]["message"]
    ns = await kube.get(NAMESPACES, name)
    assert ns["metadata"]["labels"] == {"owner": "someone"}
    assert await kube.get_or_none(DEPLOYMENTS, "astromesh-node", name) is None
    # Deleting such a tenant must not delete the namespace it never owned.
    await kube.delete(TENANTS, name, SYSTEM_NS)
    await wait_gone(kube, TENANTS, name, SYSTEM_NS)
    assert (await kube.get(NAMESPACES, name))["status"]["phase"] == "Active"
    await kube.delete(NAMESPACES, name)
