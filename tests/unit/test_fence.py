"""Builders of a tenant's fence and restricted node pod, and the comparison that covers them."""

from __future__ import annotations

import copy
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from nexus.app import fence_settings
from nexus.controllers import desired, fence
from nexus.controllers.fence import FenceSettings
from nexus.domain.resources import MANAGER_LABEL
from nexus.runtime.quantity import parse_quantity
from nexus.settings import ManagerSettings

from ..support import restricted

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = yaml.safe_load((ROOT / "config/samples/nexus_v1alpha1_nexustenant.yaml").read_text())


def tenant(**quota: Any) -> dict[str, Any]:
    t = copy.deepcopy(SAMPLE)
    if quota:
        t["spec"]["resourceQuota"] = quota
    return t


def policies(settings: FenceSettings | None = None) -> dict[str, dict[str, Any]]:
    objs = fence.network_policies(tenant(), settings or FenceSettings())
    return {p["metadata"]["name"]: p for p in objs}


# -- ownership -----------------------------------------------------------------------------


def test_every_fence_object_is_labelled_like_the_other_children() -> None:
    t = tenant()
    kids = fence.children(t, FenceSettings())
    assert [r.kind for r, _ in kids] == [
        "ServiceAccount", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "ResourceQuota",
        "LimitRange",
    ]  # fmt: skip
    for _, obj in kids:
        assert obj["metadata"]["namespace"] == "tenant-dev"
        assert obj["metadata"]["labels"] == desired.child_labels(t)


def test_namespace_enforces_the_restricted_pod_security_profile() -> None:
    labels = desired.namespace(tenant())["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"


# -- network -------------------------------------------------------------------------------


def test_ingress_is_denied_by_default() -> None:
    deny = policies()[fence.DENY_INGRESS]["spec"]
    # Every pod, Ingress isolated, and not a single rule: nothing is admitted by this policy.
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}
    # The server stores no empty list; that is still converged, and a rule added is drift.
    assert desired.is_subset(deny, {"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not desired.is_subset(deny, {**deny, "ingress": [{}]})


def test_node_port_admits_only_the_manager() -> None:
    spec = policies()[fence.NODE_INGRESS]["spec"]
    template_labels = desired.node_deployment(tenant(), "img")["spec"]["template"]["metadata"]
    selected = spec["podSelector"]["matchLabels"]
    assert selected.items() <= template_labels["labels"].items()
    assert spec["policyTypes"] == ["Ingress"]
    [rule] = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    manager = {"matchLabels": {MANAGER_LABEL: "true"}}
    # One peer with both selectors: manager pods *in* a manager namespace (two peers would
    # admit every pod of such a namespace, or such pods in any namespace).
    assert rule["from"] == [{"namespaceSelector": manager, "podSelector": manager}]


def test_extra_node_ingress_sources_are_ip_blocks() -> None:
    spec = policies(FenceSettings(node_ingress_cidrs=("192.0.2.10/32",)))[fence.NODE_INGRESS]
    peers = spec["spec"]["ingress"][0]["from"]
    assert peers[1:] == [{"ipBlock": {"cidr": "192.0.2.10/32"}}]


def test_manifests_label_the_manager_namespace_and_pods() -> None:
    docs = list(yaml.safe_load_all((ROOT / "config/manager/manager.yaml").read_text()))
    ns = next(d for d in docs if d["kind"] == "Namespace")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    peer = policies()[fence.NODE_INGRESS]["spec"]["ingress"][0]["from"][0]
    assert peer["namespaceSelector"]["matchLabels"].items() <= ns["metadata"]["labels"].items()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_egress_allows_dns_and_the_internet_minus_private_ranges() -> None:
    spec = policies()[fence.EGRESS]["spec"]
    assert spec["podSelector"] == {} and spec["policyTypes"] == ["Egress"]
    dns, world = spec["egress"]
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    assert world == {
        "to": [
            {
                "ipBlock": {
                    "cidr": "0.0.0.0/0",
                    "except": ["10.96.0.0/12", "10.244.0.0/16", "169.254.169.254/32"],
                }
            }
        ]
    }


def nets(*cidrs: str) -> list[Any]:
    return [ip_network(c) for c in cidrs]


def test_egress_blocks_place_each_denied_range_in_its_family() -> None:
    blocks = fence.egress_blocks(
        nets("0.0.0.0/0", "::/0"), nets("fd00::/8", "10.0.0.0/8", "169.254.169.254/32")
    )
    assert blocks == [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}},
        {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8"]}},
    ]


def test_egress_blocks_drop_what_is_denied_entirely_and_ignore_what_is_outside() -> None:
    blocks = fence.egress_blocks(
        nets("10.1.0.0/16", "203.0.113.0/24", "203.0.113.0/24"),
        nets("10.0.0.0/8", "198.51.100.0/24"),
    )
    # 10.1/16 lies inside a denied range; 198.51.100/24 is outside every allowed one.
    assert blocks == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    assert fence.egress_blocks(nets("10.0.0.0/8"), nets("10.0.0.0/8")) == []


def test_no_allowed_range_leaves_only_dns() -> None:
    spec = policies(FenceSettings(egress_allow_cidrs=()))[fence.EGRESS]["spec"]
    assert [list(rule) for rule in spec["egress"]] == [["ports"]]


def test_cidr_flags_are_checked_and_canonical() -> None:
    assert fence.parse_cidrs(" 10.0.0.1/8, ,192.168.0.0/16 ") == ("10.0.0.0/8", "192.168.0.0/16")
    assert fence.parse_cidrs("") == ()
    s = ManagerSettings(cluster_pod_cidr="10.42.0.5/16,fd42::/48", node_ingress_cidrs="")
    f = fence_settings(s)
    assert f.pod_cidrs == ("10.42.0.0/16", "fd42::/48")
    assert f.service_cidrs == ("10.96.0.0/12",)
    assert f.egress_deny_cidrs == ("169.254.169.254/32",)
    assert f.node_ingress_cidrs == ()
    with pytest.raises(ValidationError, match="egress_deny_cidrs"):
        ManagerSettings(egress_deny_cidrs="169.254.169.254/33")
    with pytest.raises(ValidationError, match="cluster_service_cidr"):
        ManagerSettings(cluster_service_cidr="10.96.0/12")


# -- quota ---------------------------------------------------------------------------------


def test_quota_is_the_tenants_cpu_and_memory_for_the_whole_namespace() -> None:
    hard = fence.resource_quota(tenant())["spec"]["hard"]
    q = SAMPLE["spec"]["resourceQuota"]
    assert parse_quantity(hard["limits.cpu"]) == parse_quantity(q["cpu"])
    assert parse_quantity(hard["limits.memory"]) == parse_quantity(q["memory"])
    assert hard["requests.cpu"] == hard["limits.cpu"]
    assert hard["requests.memory"] == hard["limits.memory"]
    # Recreate rollouts: the node's replicas are every pod the namespace needs.
    dep = desired.node_deployment(tenant(), "img")["spec"]
    assert dep["strategy"]["type"] == "Recreate"
    assert int(hard["pods"]) == dep["replicas"]


def test_quota_without_cpu_or_memory_limits_only_pods() -> None:
    assert fence.resource_quota(tenant(maxAgents=3))["spec"]["hard"] == {"pods": "1"}
    hard = fence.resource_quota(tenant(cpu=0.5))["spec"]["hard"]
    assert hard == {"pods": "1", "limits.cpu": "0.5", "requests.cpu": "0.5"}


def test_limit_range_defaults_fit_within_the_quota() -> None:
    [item] = fence.limit_range(tenant())["spec"]["limits"]
    assert item["type"] == "Container"
    assert item["default"] == fence.DEFAULT_LIMITS
    assert item["defaultRequest"] == fence.DEFAULT_REQUESTS
    [small] = fence.limit_range(tenant(cpu="250m", memory="64Mi"))["spec"]["limits"]
    assert small["default"] == {"cpu": "250m", "memory": "64Mi"}
    assert small["defaultRequest"] == {"cpu": "100m", "memory": "64Mi"}
    for kind in ("default", "defaultRequest"):
        assert parse_quantity(small[kind]["cpu"]) <= parse_quantity("250m")


# -- the node pod ----------------------------------------------------------------------------


def node_pod(**kw: Any) -> dict[str, Any]:
    pod: dict[str, Any] = desired.node_deployment(tenant(), "img", **kw)["spec"]["template"]["spec"]
    return pod


def test_node_pod_satisfies_the_restricted_profile() -> None:
    pod = node_pod(run_as_user=1234)
    assert restricted.violations(pod) == []
    assert pod["securityContext"]["runAsUser"] == 1234
    assert pod["serviceAccountName"] == desired.NODE_SERVICE_ACCOUNT
    assert fence.service_account(tenant())["automountServiceAccountToken"] is False


def test_the_restricted_checker_catches_each_breach() -> None:
    breaches = [
        lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        lambda p: p["initContainers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        lambda p: p["securityContext"].update(runAsUser=0),
        lambda p: p["securityContext"].pop("runAsNonRoot"),
        lambda p: p["securityContext"].pop("seccompProfile"),
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda p: p["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
        lambda p: p.pop("automountServiceAccountToken"),
        lambda p: p.update(hostNetwork=True),
    ]
    for breach in breaches:
        pod = node_pod()
        breach(pod)
        assert restricted.violations(pod), breach


def test_everything_the_node_writes_is_an_empty_dir() -> None:
    pod = node_pod()
    node = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    assert all(volumes[name] == {"name": name, "emptyDir": {}} for name in mounts.values())
    env = {e["name"]: e["value"] for e in node["env"]}
    for path in (env["ASTROMESH_CONFIG_DIR"], env["HOME"], "/tmp", "/var/lib/astromesh"):
        assert path in mounts, path
    # The init container fills the node's config volume from the image.
    [seed] = pod["initContainers"]
    assert seed["image"] == node["image"]
    assert {m["name"] for m in seed["volumeMounts"]} == {mounts[env["ASTROMESH_CONFIG_DIR"]]}
    assert seed["resources"] == node["resources"]


# -- comparison ----------------------------------------------------------------------------


def test_quota_quantities_compare_by_value() -> None:
    want = {"spec": {"hard": {"pods": "1", "limits.cpu": "0.5", "limits.memory": "1Gi"}}}
    live = {"spec": {"hard": {"pods": "1", "limits.cpu": "500m", "limits.memory": "1024Mi"}}}
    assert desired.is_subset(want, live)
    live["spec"]["hard"]["limits.cpu"] = "600m"
    assert not desired.is_subset(want, live)


def test_limit_range_defaults_compare_by_value() -> None:
    want = fence.limit_range(tenant())
    live = copy.deepcopy(want)
    live["spec"]["limits"][0]["default"]["cpu"] = "0.5"
    assert desired.is_subset(want, live)
    live["spec"]["limits"][0]["default"]["ephemeral-storage"] = "1Gi"
    assert not desired.is_subset(want, live)


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o["spec"]["hard"].update({"services": "0"}),
        lambda o: o["spec"]["podSelector"].update({"matchLabels": {"x": "y"}}),
        lambda o: o["spec"]["template"]["spec"]["securityContext"].update(sysctls=[]),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
            privileged=True
        ),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["securityContext"][
            "capabilities"
        ].update(add=["NET_ADMIN"]),
    ],
)
def test_added_keys_in_exact_maps_are_drift(edit: Any) -> None:
    want = {
        "spec": {
            "hard": {"pods": "1"},
            "podSelector": {},
            "template": desired.node_deployment(tenant(), "img")["spec"]["template"],
        }
    }
    live = copy.deepcopy(want)
    assert desired.is_subset(want, live)
    edit(live)
    assert not desired.is_subset(want, live)


def test_merge_patch_deletes_extra_keys_of_exact_maps_only() -> None:
    want = {"metadata": {"labels": {"a": "1"}}, "spec": {"hard": {"pods": "1"}, "podSelector": {}}}
    live = {
        "metadata": {"labels": {"a": "1", "other": "kept"}},
        "spec": {"hard": {"pods": "2", "services": "0"}, "podSelector": {"matchLabels": {}}},
    }
    assert desired.merge_patch(want, live) == {
        "metadata": {"labels": {"a": "1"}},
        "spec": {"hard": {"pods": "1", "services": None}, "podSelector": {"matchLabels": None}},
    }
    assert desired.merge_patch(want, None) == want
