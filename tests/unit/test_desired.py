"""The desired children of a tenant, the drift comparison, and the spec sent to the node."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nexus.controllers import desired
from nexus.controllers.agent import _looks_deployed, _same_spec, desired_spec
from nexus.domain.resources import (
    AGENT_NAMESPACE_LABEL,
    MANAGED_LABEL,
    TENANT_LABEL,
    TENANT_NAMESPACE_LABEL,
)
from nexus.node import NODE_NAME, NODE_POD_LABELS, NODE_POD_SELECTOR, NODE_PORT

from ..support.fakes import SYSTEM_NS, agent, tenant


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = deploy["spec"]["template"]["spec"]["containers"][0]
    return c


def test_the_namespace_is_labelled_managed_and_owned() -> None:
    ns = desired.namespace(tenant("acme"))
    assert ns["metadata"]["name"] == "acme"
    assert ns["metadata"]["labels"] == {
        MANAGED_LABEL: "true",
        TENANT_LABEL: "acme",
        TENANT_NAMESPACE_LABEL: SYSTEM_NS,
        desired.MANAGED_BY_LABEL: "nexus",
        **desired.POD_SECURITY_LABELS,
    }


def test_the_node_deployment_follows_the_tenant_spec() -> None:
    deploy = desired.node_deployment(tenant("acme", nodeProfile="inference"), "img:1")
    assert deploy["metadata"]["namespace"] == "acme"
    assert deploy["spec"]["replicas"] == 1
    c = container(deploy)
    assert c["image"] == "img:1"
    assert c["env"][0] == {"name": "ASTROMESH_ROLE", "value": "inference"}
    assert c["ports"][0]["containerPort"] == NODE_PORT
    assert c["readinessProbe"] == {"httpGet": {"path": "/v1/health", "port": NODE_PORT}}
    assert c["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()


def test_without_a_quota_the_node_has_no_limits_and_the_full_profile() -> None:
    t = tenant("acme")
    del t["spec"]["resourceQuota"], t["spec"]["nodeProfile"]
    c = container(desired.node_deployment(t, "img"))
    assert c["resources"] == {}
    assert c["env"][0]["value"] == "full"


def test_integer_and_empty_quantities() -> None:
    t = tenant("acme")
    t["spec"]["resourceQuota"] = {"cpu": 2, "memory": ""}
    assert container(desired.node_deployment(t, "img"))["resources"] == {"limits": {"cpu": "2"}}


def test_the_service_selects_the_node_pods() -> None:
    t = tenant("acme")
    svc = desired.node_service(t)
    pods = desired.node_deployment(t, "img")["spec"]["template"]["metadata"]["labels"]
    assert svc["metadata"]["name"] == NODE_NAME
    assert svc["spec"]["selector"].items() <= pods.items()
    assert svc["spec"]["ports"][0]["port"] == NODE_PORT


# -- is_subset ----------------------------------------------------------------------------------


def test_fields_the_server_adds_are_ignored() -> None:
    want = desired.node_deployment(tenant("acme"), "img")
    live = copy.deepcopy(want)
    live["spec"]["progressDeadlineSeconds"] = 600
    container(live)["imagePullPolicy"] = "Always"
    container(live)["readinessProbe"]["timeoutSeconds"] = 1
    assert desired.is_subset(want, live)


def test_a_changed_value_is_drift() -> None:
    want = desired.node_deployment(tenant("acme"), "img")
    live = copy.deepcopy(want)
    container(live)["image"] = "other"
    assert not desired.is_subset(want, live)


def test_lists_must_match_element_for_element() -> None:
    want = desired.node_deployment(tenant("acme"), "img")
    live = copy.deepcopy(want)
    container(live)["env"].append({"name": "EXTRA", "value": "1"})
    assert not desired.is_subset(want, live)


@pytest.mark.parametrize(("want", "live"), [("0.5", "500m"), ("2", "2000m"), ("1Gi", "1024Mi")])
def test_limits_compare_by_value(want: str, live: str) -> None:
    w = {"spec": {"template": {"spec": {"containers": [{"resources": {"limits": {"cpu": want}}}]}}}}
    lv = copy.deepcopy(w)
    lv["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = live
    assert desired.is_subset(w, lv)


def test_a_removed_limit_is_drift() -> None:
    t = tenant("acme")
    want = desired.node_deployment(t, "img")
    live = copy.deepcopy(want)
    del container(want)["resources"]["limits"]["memory"]
    assert not desired.is_subset(want, live)


def test_a_missing_live_object_is_drift() -> None:
    assert not desired.is_subset({"spec": {"replicas": 1}}, None)
    assert not desired.is_subset({"spec": {"replicas": 1}}, {"spec": []})


# -- the spec sent to the node -------------------------------------------------------------------


def test_desired_spec_is_named_after_the_resource() -> None:
    a = agent("bot", "acme")
    a["spec"]["agentSpec"]["metadata"]["name"] = "other"
    spec = desired_spec(a)
    assert spec["metadata"]["name"] == "bot"
    assert a["spec"]["agentSpec"]["metadata"]["name"] == "other"  # a copy, not the cached dict


def test_desired_spec_without_metadata() -> None:
    a = agent("bot", "acme")
    del a["spec"]["agentSpec"]["metadata"]
    assert desired_spec(a)["metadata"] == {
        "name": "bot",
        "labels": {AGENT_NAMESPACE_LABEL: "acme"},
    }


def test_desired_spec_is_marked_as_nexus_and_keeps_the_users_labels() -> None:
    a = agent("bot", "acme")
    a["spec"]["agentSpec"]["metadata"]["labels"] = {"team": "x", AGENT_NAMESPACE_LABEL: "evil"}
    assert desired_spec(a)["metadata"]["labels"] == {"team": "x", AGENT_NAMESPACE_LABEL: "acme"}
    assert a["spec"]["agentSpec"]["metadata"]["labels"][AGENT_NAMESPACE_LABEL] == "evil"
    a["spec"]["agentSpec"]["metadata"]["labels"] = "not a map"
    assert desired_spec(a)["metadata"]["labels"] == {AGENT_NAMESPACE_LABEL: "acme"}


def test_the_node_pod_selector_matches_the_pods_of_the_node_deployment() -> None:
    dep = desired.node_deployment(tenant("acme"), "img")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in NODE_POD_LABELS.items())
    assert ",".join(f"{k}={v}" for k, v in NODE_POD_LABELS.items()) == NODE_POD_SELECTOR


def test_the_skills_the_node_injects_are_not_a_difference() -> None:
    want = desired_spec(agent("bot", "acme"))
    live = copy.deepcopy(want)
    live["spec"]["skills"] = []
    assert _same_spec(want, live)
    assert _looks_deployed(want, live)
    assert not _looks_deployed(want, want)


def test_a_spec_difference_is_not_converged() -> None:
    want = desired_spec(agent("bot", "acme"))
    live = copy.deepcopy(want)
    live["spec"]["orchestration"]["pattern"] = "swarm"
    assert not _same_spec(want, live)
