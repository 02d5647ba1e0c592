"""Tenants on the real cluster: their node pods, their agents, their deletion."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from .cluster import AGENT_YAML, SYSTEM_NS, Api, Cluster, eventually, pod_ready

# Node pods that became Running and Ready take a few seconds on this node; a cold image
# import by Python is the slow part.
READY_TIMEOUT = 240


async def ready_node_pod(cluster: Cluster, namespace: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        ready = [p for p in await cluster.node_pods(namespace) if pod_ready(p)]
        return ready[0] if len(ready) == 1 else None

    return await eventually(probe, READY_TIMEOUT, f"one Running+Ready node pod in {namespace}")


async def node_agents(pod: dict[str, Any]) -> set[str]:
    """The agents on the node, asked of the pod itself (the test runs on the node)."""
    url = f"http://{pod['status']['podIP']}:8000/v1/agents"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    return {a["name"] for a in body["agents"]}


async def create_agent(api: Api, key: str, name: str) -> None:
    await api.call(
        "POST", "/api/v1/agents", 201, data=AGENT_YAML.format(name=name),
        headers={"X-API-Key": key, "Content-Type": "application/yaml"},
    )  # fmt: skip


async def wait_agent_running(api: Api, key: str, name: str, timeout: float = 180) -> None:
    async def probe() -> bool:
        _, body = await api.call("GET", f"/api/v1/agents/{name}", headers={"X-API-Key": key})
        status = (body or {}).get("status") or {}
        return status.get("phase") == "Running" and status.get("nodeAck") is True

    await eventually(probe, timeout, f"agent {name} Running with nodeAck")


@pytest.fixture(scope="module")
async def two_tenants(api: Api) -> AsyncIterator[list[dict[str, Any]]]:
    auth = await api.user(f"e2e-{secrets.token_hex(4)}@example.com")
    out = []
    try:
        for label in ("a", "b"):
            t = await api.tenant(auth, f"E2E tenant {label}")
            out.append({**t, "auth": auth, "key": await api.key(auth, t["id"])})
        for t in out:
            t.update(await api.wait_tenant_ready(auth, t["id"]))
        yield out
    finally:
        # The node has room for a few tenants only: leave it as it was.
        for t in out:
            await api.call("DELETE", f"/api/v1/tenants/{t['id']}", headers=auth)


async def test_each_tenant_gets_a_running_ready_node_pod(
    cluster: Cluster, two_tenants: list[dict[str, Any]]
) -> None:
    pods = [await ready_node_pod(cluster, t["namespace"]) for t in two_tenants]
    assert pods[0]["metadata"]["namespace"] != pods[1]["metadata"]["namespace"]
    for pod in pods:
        image = pod["spec"]["containers"][0]["image"]
        assert image.startswith("nexus-local/astromesh-node:"), image


async def test_each_agent_is_served_by_its_own_tenants_pod(
    cluster: Cluster, api: Api, two_tenants: list[dict[str, Any]]
) -> None:
    a, b = two_tenants
    await create_agent(api, a["key"], "agent-of-a")
    await create_agent(api, b["key"], "agent-of-b")
    await wait_agent_running(api, a["key"], "agent-of-a")
    await wait_agent_running(api, b["key"], "agent-of-b")
    on_a = await node_agents(await ready_node_pod(cluster, a["namespace"]))
    on_b = await node_agents(await ready_node_pod(cluster, b["namespace"]))
    assert "agent-of-a" in on_a and "agent-of-b" not in on_a
    assert "agent-of-b" in on_b and "agent-of-a" not in on_b
    # Through the API, a key sees only its own tenant's agent.
    _, listed = await api.call("GET", "/api/v1/agents", 200, headers={"X-API-Key": a["key"]})
    names = {x["name"] for x in (listed["items"] if isinstance(listed, dict) else listed)}
    assert names == {"agent-of-a"}


async def test_node_pods_run_under_the_restricted_security_context(
    cluster: Cluster, two_tenants: list[dict[str, Any]]
) -> None:
    """Needs the namespace hardening (restricted pod securityContext)."""
    pod = await ready_node_pod(cluster, two_tenants[0]["namespace"])
    spec = pod["spec"]
    psc = spec.get("securityContext") or {}
    csc = spec["containers"][0].get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True
    assert psc.get("runAsUser", csc.get("runAsUser")) == 65532
    assert csc.get("allowPrivilegeEscalation") is False
    assert csc.get("readOnlyRootFilesystem") is True
    assert csc.get("capabilities", {}).get("drop") == ["ALL"]
    assert spec.get("automountServiceAccountToken") is False
    uid = await cluster.akubectl(
        "exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "--", "id", "-u"
    )
    assert uid.strip() == "65532"


async def test_deleting_a_node_pod_reports_node_unavailable_then_recovers(
    cluster: Cluster, api: Api, two_tenants: list[dict[str, Any]]
) -> None:
    """Needs the per-tenant node work (the NodeAvailable condition)."""
    a = two_tenants[0]
    ns = a["namespace"]
    await create_agent(api, a["key"], "survivor")
    await wait_agent_running(api, a["key"], "survivor")
    old = await ready_node_pod(cluster, ns)
    await cluster.akubectl("delete", "pod", "-n", ns, old["metadata"]["name"], "--wait=false")

    async def node_unavailable() -> bool:
        cr = await cluster.aget("nexustenant", "-n", SYSTEM_NS, a["crName"])
        conds = {c["type"]: c["status"] for c in (cr.get("status") or {}).get("conditions", [])}
        return conds.get("NodeAvailable") == "False"

    await eventually(node_unavailable, 60, "NodeAvailable=False on the tenant", interval=0.2)
    new = await ready_node_pod(cluster, ns)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    # The new pod starts empty; the manager deploys the agents again.
    await eventually(
        lambda: _has_agent(new, "survivor"), 180, "agent survivor back on the new node pod"
    )
    await wait_agent_running(api, a["key"], "survivor")


async def _has_agent(pod: dict[str, Any], name: str) -> bool:
    try:
        return name in await node_agents(pod)
    except (aiohttp.ClientError, OSError, AssertionError):
        return False


async def test_deleting_a_tenant_removes_its_namespace_and_pods(cluster: Cluster, api: Api) -> None:
    auth = await api.user(f"e2e-del-{secrets.token_hex(4)}@example.com")
    t = await api.tenant(auth, "E2E doomed")
    try:
        t = await api.wait_tenant_ready(auth, t["id"])
        await ready_node_pod(cluster, t["namespace"])
    finally:
        await api.call("DELETE", f"/api/v1/tenants/{t['id']}", 200, headers=auth)

    async def gone() -> bool:
        out = await cluster.akubectl("get", "namespace", t["namespace"], check=False)
        return out.strip() == ""

    await eventually(gone, 180, f"namespace {t['namespace']} deleted")
