"""The fence of a tenant namespace on a real apiserver + controller-manager.

NetworkPolicies, ResourceQuota, LimitRange, the node's ServiceAccount and restricted pod
template: created for a kubectl-applied tenant, admitted by the real admission chain, repaired
after deletion or edits, and following quota changes. (envtest has no CNI and no kubelet:
these tests check the objects; enforcement needs a real cluster.)
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s_client

from nexus.app import build_manager
from nexus.controllers import fence
from nexus.domain.resources import MANAGER_LABEL, TENANT_LABEL, TENANTS
from nexus.runtime import ApiError, Manager
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.quantity import parse_quantity
from nexus.runtime.resource import (
    DEPLOYMENTS,
    LIMIT_RANGES,
    NAMESPACES,
    NETWORK_POLICIES,
    PODS,
    RESOURCE_QUOTAS,
    SERVICE_ACCOUNTS,
    Resource,
)

from ..conftest import ROOT
from ..support import restricted
from ..support.faults import eventually
from ..support.node import AstromeshNode
from .test_manifests import kubectl
from .test_nexus_controllers import (
    SYSTEM_NS,
    nexus_settings,
    phase,
    ready_tenant,
    uid,
    wait_for,
    wait_gone,
)

pytestmark = pytest.mark.cluster

SAMPLE_PATH = "config/samples/nexus_v1alpha1_nexustenant.yaml"
SAMPLE = yaml.safe_load(Path(ROOT / SAMPLE_PATH).read_text())
NODE = "astromesh-node"


@pytest.fixture(scope="module")
async def node() -> AsyncIterator[AstromeshNode]:
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


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


def q(value: Any) -> Any:
    return parse_quantity(value)


async def by_name(kube: Client, res: Resource, ns: str) -> dict[str, dict[str, Any]]:
    items, _ = await kube.list_all(res, ns)
    return {o["metadata"]["name"]: o for o in items}


async def test_a_tenant_from_the_kubectl_sample_is_fenced(
    nexus: Manager, kube: Client, envtest: Environment
) -> None:
    await kubectl(envtest, "apply", "-f", SAMPLE_PATH)
    tenant = await wait_for(kube, TENANTS, "tenant-dev", SYSTEM_NS, phase("Ready"))
    ns = tenant["status"]["namespace"]
    quota = SAMPLE["spec"]["resourceQuota"]
    try:
        namespace = await kube.get(NAMESPACES, ns)
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
            "restricted"
        )

        # Network: ingress denied by default, the node's port open to the manager only.
        pols = await by_name(kube, NETWORK_POLICIES, ns)
        assert set(pols) == {fence.DENY_INGRESS, fence.NODE_INGRESS, fence.EGRESS}
        deny = pols[fence.DENY_INGRESS]["spec"]
        assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
        assert not deny.get("ingress")
        allow = pols[fence.NODE_INGRESS]["spec"]
        dep = await kube.get(DEPLOYMENTS, NODE, ns)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert allow["podSelector"]["matchLabels"].items() <= pod_labels.items()
        [rule] = allow["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
        manager = {"matchLabels": {MANAGER_LABEL: "true"}}
        assert rule["from"] == [{"namespaceSelector": manager, "podSelector": manager}]
        egress = pols[fence.EGRESS]["spec"]
        assert egress["policyTypes"] == ["Egress"]
        block = egress["egress"][1]["to"][0]["ipBlock"]
        assert block["cidr"] == "0.0.0.0/0"
        assert {"10.244.0.0/16", "10.96.0.0/12", "169.254.169.254/32"} <= set(block["except"])

        # Quota: the sample's cpu and memory for the whole namespace.
        hard = (await kube.get(RESOURCE_QUOTAS, fence.QUOTA, ns))["spec"]["hard"]
        assert q(hard["limits.cpu"]) == q(quota["cpu"])
        assert q(hard["limits.memory"]) == q(quota["memory"])
        assert hard["pods"] == "1"
        lr = await kube.get(LIMIT_RANGES, fence.LIMITS, ns)
        assert lr["spec"]["limits"][0]["default"]

        # The node pod: restricted, its own ServiceAccount, no token.
        template = dep["spec"]["template"]["spec"]
        assert restricted.violations(template) == []
        sa = await kube.get(SERVICE_ACCOUNTS, template["serviceAccountName"], ns)
        assert sa["automountServiceAccountToken"] is False
        for obj in (*pols.values(), sa, lr, dep):
            assert obj["metadata"]["labels"][TENANT_LABEL] == "tenant-dev"

        # The ReplicaSet's pod passes the real admission chain (quota with its pod count and
        # both containers' limits, LimitRange) and keeps the template's settings.
        async def node_pod() -> dict[str, Any] | None:
            pods, _ = await kube.list_all(PODS, ns)
            return pods[0] if pods else None

        pod = await eventually(node_pod, timeout=30, message="no node pod was admitted")
        assert restricted.violations(pod["spec"]) == []
        # Usage is eventually consistent (the quota controller recomputes it from its caches),
        # so wait for the pod to be counted; then the namespace holds nothing more.
        seen: list[str] = []

        async def counted() -> dict[str, str] | None:
            quota = await kube.get(RESOURCE_QUOTAS, fence.QUOTA, ns)
            seen[:] = [str(quota.get("status"))]
            used: dict[str, str] = (quota.get("status") or {}).get("used") or {}
            return used if used.get("pods") == "1" else None

        used = await eventually(counted, timeout=45, message=lambda: f"uncounted: {seen}")
        assert q(used["limits.cpu"]) == q(quota["cpu"])
        with pytest.raises(ApiError, match="exceeded quota"):
            await kube.create(PODS, bare_pod("intruder"), ns)
    finally:
        await kubectl(envtest, "delete", "-f", SAMPLE_PATH, "--wait=false")
        await wait_gone(kube, TENANTS, "tenant-dev", SYSTEM_NS)
        await wait_gone(kube, NAMESPACES, ns)


def bare_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


async def test_limit_range_lets_the_quota_admit_a_pod_without_limits(
    nexus: Manager, kube: Client, namespace: str
) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    # The tenant namespace is full (its node takes the whole quota); the same two objects in
    # an empty namespace show what they do to a pod that states no resources.
    quota = await kube.get(RESOURCE_QUOTAS, fence.QUOTA, tname)
    lr = await kube.get(LIMIT_RANGES, fence.LIMITS, tname)
    await kube.create(
        RESOURCE_QUOTAS, {"metadata": {"name": "copy"}, "spec": quota["spec"]}, namespace
    )

    async def quota_ready() -> bool:
        live = await kube.get(RESOURCE_QUOTAS, "copy", namespace)
        return bool((live.get("status") or {}).get("hard"))

    await eventually(quota_ready, timeout=30, message="quota status never computed")
    with pytest.raises(ApiError, match="must specify"):
        await kube.create(PODS, bare_pod("without-defaults"), namespace)
    await kube.create(LIMIT_RANGES, {"metadata": {"name": "copy"}, "spec": lr["spec"]}, namespace)
    pod = await kube.create(PODS, bare_pod("with-defaults"), namespace)
    res = pod["spec"]["containers"][0]["resources"]
    defaults = lr["spec"]["limits"][0]
    assert {k: q(v) for k, v in res["limits"].items()} == {
        k: q(v) for k, v in defaults["default"].items()
    }
    assert {k: q(v) for k, v in res["requests"].items()} == {
        k: q(v) for k, v in defaults["defaultRequest"].items()
    }
    await kube.delete(TENANTS, tname, SYSTEM_NS)


def _without(path: tuple[str, ...]) -> Any:
    def edit(obj: dict[str, Any]) -> None:
        for key in path[:-1]:
            obj = obj[key]
        obj.pop(path[-1])

    return edit


async def test_deleted_fence_objects_come_back_within_seconds(nexus: Manager, kube: Client) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    objects = [
        (NETWORK_POLICIES, fence.DENY_INGRESS),
        (NETWORK_POLICIES, fence.NODE_INGRESS),
        (NETWORK_POLICIES, fence.EGRESS),
        (RESOURCE_QUOTAS, fence.QUOTA),
        (LIMIT_RANGES, fence.LIMITS),
        (SERVICE_ACCOUNTS, NODE),
    ]
    for res, name in objects:
        old = await kube.get(res, name, tname)
        await kube.delete(res, name, tname)
        await wait_for(
            kube, res, name, tname, lambda o, u=old["metadata"]["uid"]: o["metadata"]["uid"] != u,
            timeout=10,
        )  # fmt: skip
    await kube.delete(TENANTS, tname, SYSTEM_NS)


async def test_edited_fence_objects_are_put_back(nexus: Manager, kube: Client) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)
    originals = {
        (res, name): await kube.get(res, name, tname)
        for res, name in [
            (RESOURCE_QUOTAS, fence.QUOTA),
            (NETWORK_POLICIES, fence.DENY_INGRESS),
            (NETWORK_POLICIES, fence.NODE_INGRESS),
            (NETWORK_POLICIES, fence.EGRESS),
            (SERVICE_ACCOUNTS, NODE),
            (DEPLOYMENTS, NODE),
        ]
    }
    allow_all = [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]
    edits: list[tuple[Resource, str, Any]] = [
        # A bigger quota, and a new entry the tenant did not ask for.
        (RESOURCE_QUOTAS, fence.QUOTA, {"spec": {"hard": {"limits.cpu": "100", "services": "5"}}}),
        # Open the default deny, and narrow it to nothing.
        (NETWORK_POLICIES, fence.DENY_INGRESS, {"spec": {"ingress": allow_all}}),
        (
            NETWORK_POLICIES,
            fence.DENY_INGRESS,
            {"spec": {"podSelector": {"matchLabels": {"nobody": "x"}}}},
        ),
        # Admit everyone to the node's port.
        (NETWORK_POLICIES, fence.NODE_INGRESS, {"spec": {"ingress": allow_all}}),
        # Let tenant pods reach the metadata address and the cluster.
        (
            NETWORK_POLICIES,
            fence.EGRESS,
            {"spec": {"egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}},
        ),
        (SERVICE_ACCOUNTS, NODE, {"automountServiceAccountToken": True}),
        (
            DEPLOYMENTS,
            NODE,
            {
                "spec": {
                    "template": {
                        "spec": {
                            "securityContext": {
                                "runAsUser": 0,
                                "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}],
                            }
                        }
                    }
                }
            },
        ),
    ]
    for res, name, patch in edits:
        await kube.patch(res, name, patch, tname)
        want = originals[(res, name)]
        await wait_for(
            kube, res, name, tname,
            lambda o, w=want: _spec_of(o) == _spec_of(w), timeout=10,
        )  # fmt: skip
    # A container made privileged (the containers list is replaced whole by the repair).
    dep = await kube.get(DEPLOYMENTS, NODE, tname)
    containers = copy.deepcopy(dep["spec"]["template"]["spec"]["containers"])
    containers[0]["securityContext"] = {"privileged": True}
    await kube.patch(
        DEPLOYMENTS, NODE, {"spec": {"template": {"spec": {"containers": containers}}}}, tname
    )
    repaired = await wait_for(
        kube, DEPLOYMENTS, NODE, tname,
        lambda d: not restricted.violations(d["spec"]["template"]["spec"]), timeout=10,
    )  # fmt: skip
    assert (
        "privileged" not in repaired["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    )
    # The namespace loses its Pod Security label.
    await kube.patch(
        NAMESPACES, tname, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": None}}}
    )
    await wait_for(
        kube, NAMESPACES, tname, None,
        lambda n: n["metadata"]["labels"].get("pod-security.kubernetes.io/enforce")
        == "restricted",
        timeout=10,
    )  # fmt: skip
    await kube.delete(TENANTS, tname, SYSTEM_NS)


def _spec_of(obj: dict[str, Any]) -> Any:
    if obj["kind"] == "ServiceAccount":
        return obj.get("automountServiceAccountToken")
    if obj["kind"] == "Deployment":
        return obj["spec"]["template"]["spec"].get("securityContext")
    return obj["spec"]


async def test_a_changed_quota_reaches_the_objects(nexus: Manager, kube: Client) -> None:
    tname = f"tenant-{uid()}"
    await ready_tenant(kube, tname)

    async def hard() -> dict[str, str]:
        quota: dict[str, str] = (await kube.get(RESOURCE_QUOTAS, fence.QUOTA, tname))["spec"][
            "hard"
        ]
        return quota

    async def node_limits() -> dict[str, str]:
        dep = await kube.get(DEPLOYMENTS, NODE, tname)
        limits: dict[str, str] = (
            dep["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits") or {}
        )
        return limits

    await kube.patch(
        TENANTS, tname, {"spec": {"resourceQuota": {"cpu": "3", "memory": "6Gi"}}}, SYSTEM_NS
    )
    await eventually(
        lambda: _check(hard, {"limits.cpu": "3", "limits.memory": "6Gi", "requests.cpu": "3"}),
        timeout=10, message="quota did not follow the tenant",
    )  # fmt: skip
    # The node Deployment is written one stage after the quota (the fence comes first).
    await eventually(
        lambda: _check(node_limits, {"cpu": "3", "memory": "6Gi"}),
        timeout=10, message="node limits did not follow the tenant",
    )  # fmt: skip

    # A quota without memory: the namespace-wide memory limit goes away too.
    await kube.patch(
        TENANTS, tname, {"spec": {"resourceQuota": {"memory": None, "cpu": "250m"}}}, SYSTEM_NS
    )

    async def memory_gone() -> bool:
        h = await hard()
        return "limits.memory" not in h and "requests.memory" not in h and h["limits.cpu"] == "250m"

    await eventually(memory_gone, timeout=10, message="limits.memory stayed in the quota")

    async def node_follows() -> bool:
        return await node_limits() == {"cpu": "250m"}

    await eventually(node_follows, timeout=10, message="node limits kept the old memory")
    # Container defaults shrink to fit a small quota.
    lr = await kube.get(LIMIT_RANGES, fence.LIMITS, tname)
    assert lr["spec"]["limits"][0]["default"]["cpu"] == "250m"
    await kube.delete(TENANTS, tname, SYSTEM_NS)


async def _check(get: Any, want: dict[str, str]) -> bool:
    have = await get()
    return all(k in have and q(have[k]) == q(v) for k, v in want.items())
