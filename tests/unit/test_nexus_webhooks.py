"""Nexus's admission rules with a small in-memory lookup (the real path is in
tests/integration/test_webhooks.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nexus.domain.agentspec import validate_agent
from nexus.domain.tenant import ResourceQuota
from nexus.runtime.webhook import AdmissionRequest, Denied
from nexus.webhooks.agent import NexusAgentValidator, spec_problems
from nexus.webhooks.tenant import NexusTenantDefaulter, NexusTenantValidator

Object = dict[str, Any]

AGENT_SPEC: Object = {
    "apiVersion": "astromesh/v1",
    "kind": "Agent",
    "metadata": {"name": "bot"},
    "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}},
}


class FakeLookup:
    tenant_namespace = "nexus-system"

    def __init__(self, tenants: dict[str, Object] | None = None, agents: int = 0) -> None:
        self.tenants = tenants or {}
        self.agents = agents

    async def tenant(self, name: str) -> Object | None:
        return self.tenants.get(name)

    async def live_agents(self, namespace: str) -> list[Object]:
        return [{"metadata": {"name": f"a{i}", "namespace": namespace}} for i in range(self.agents)]


def request(op: str, obj: Object | None, old: Object | None = None, ns: str = "t1") -> Any:
    return AdmissionRequest.from_review(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "x",
                "operation": op,
                "namespace": ns,
                "object": obj,
                "oldObject": old,
            },
        }
    )


def agent(name: str = "bot", agent_spec: Object | None = None, ns: str = "t1") -> Object:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"agentSpec": copy.deepcopy(agent_spec or AGENT_SPEC)},
    }


def tenant(phase: str = "Ready", max_agents: int | None = 10, profile: str = "full") -> Object:
    quota = {} if max_agents is None else {"maxAgents": max_agents}
    return {
        "metadata": {"name": "t1", "namespace": "nexus-system"},
        "spec": {"nodeProfile": profile, "resourceQuota": quota},
        "status": {"phase": phase},
    }


async def test_agent_errors_are_the_apis_plus_the_tenant_rules_all_at_once() -> None:
    bad = copy.deepcopy(AGENT_SPEC)
    bad["spec"]["model"]["primary"] = {"provider": "nope"}
    validator = NexusAgentValidator(FakeLookup())  # type: ignore[arg-type]
    obj = agent(agent_spec=bad)
    with pytest.raises(Denied) as info:
        await validator.validate_create(request("CREATE", obj), obj)
    expected = validate_agent(bad)
    assert info.value.problems[: len(expected)] == expected
    assert "namespace 't1' does not belong to a tenant" in info.value.problems[-1]
    assert info.value.code == 422


async def test_quota_and_not_ready_tenant() -> None:
    obj = agent()
    full = NexusAgentValidator(FakeLookup({"t1": tenant(max_agents=2)}, agents=2))  # type: ignore[arg-type]
    with pytest.raises(Denied) as info:
        await full.validate_create(request("CREATE", obj), obj)
    assert info.value.problems == ["exceeded quota: maxAgents=2"]
    assert info.value.code == 403
    pending = NexusAgentValidator(FakeLookup({"t1": tenant("Provisioning")}))  # type: ignore[arg-type]
    warnings = await pending.validate_create(request("CREATE", obj), obj)
    assert warnings == [
        "tenant 't1' is not Ready yet (phase Provisioning); the agent waits in Pending"
    ]
    unlimited = NexusAgentValidator(FakeLookup({"t1": tenant(max_agents=None)}, agents=99))  # type: ignore[arg-type]
    assert await unlimited.validate_create(request("CREATE", obj), obj) == []


async def test_name_rule_and_metadata_only_updates() -> None:
    assert spec_problems(agent(name="other")) == [
        "metadata.name must be 'other' (the name of the NexusAgent)"
    ]
    validator = NexusAgentValidator(FakeLookup())  # type: ignore[arg-type]
    stored = agent(agent_spec={"apiVersion": "astromesh/v1"})  # invalid, stored long ago
    relabelled = copy.deepcopy(stored)
    relabelled["metadata"]["labels"] = {"a": "b"}
    # Finalizers and labels go through whatever the spec holds.
    assert (
        await validator.validate_update(request("UPDATE", relabelled, stored), stored, relabelled)
        == ()
    )
    changed = agent(agent_spec={"apiVersion": "astromesh/v2"})
    with pytest.raises(Denied):
        await validator.validate_update(request("UPDATE", changed, stored), stored, changed)


async def test_tenant_rules() -> None:
    validator = NexusTenantValidator(FakeLookup(agents=3))  # type: ignore[arg-type]
    bad = {
        "metadata": {"name": "kube-x", "namespace": "default"},
        "spec": {"resourceQuota": {"maxAgents": -1, "cpu": "lots", "memory": "0"}},
    }
    with pytest.raises(Denied) as info:
        await validator.validate_create(request("CREATE", bad, ns="default"), bad)
    assert info.value.problems == [
        "NexusTenants live in namespace 'nexus-system': one in 'default' would never be "
        "provisioned",
        "tenant name 'kube-x' is a system namespace; choose another name",
        "spec.resourceQuota.maxAgents must be an integer of at least 0",
        'spec.resourceQuota.cpu must be a quantity such as "4" or "500m"',
        "spec.resourceQuota.memory must be greater than zero",
    ]
    old = tenant()
    new = tenant(profile="gpu")
    with pytest.raises(Denied, match=r"spec\.nodeProfile is immutable"):
        await validator.validate_update(request("UPDATE", new, old), old, new)
    lowered = tenant(max_agents=1)
    warnings = await validator.validate_update(request("UPDATE", lowered, old), old, lowered)
    assert warnings == [
        "maxAgents=1 is below the tenant's 3 agents: the newest 2 will be marked Failed "
        "(QuotaExceeded)"
    ]


async def test_defaults_match_what_the_api_sets() -> None:
    defaulter = NexusTenantDefaulter(ResourceQuota(max_agents=5, cpu="2", memory="4Gi"))
    obj: Object = {"metadata": {"name": "acme"}, "spec": {"resourceQuota": {"cpu": "8"}}}
    await defaulter.default(request("CREATE", obj), obj)
    assert obj["spec"] == {
        "displayName": "acme",
        "nodeProfile": "full",
        "resourceQuota": {"cpu": "8", "maxAgents": 5, "memory": "4Gi"},
    }
    later: Object = {"metadata": {"name": "acme"}, "spec": {}}
    await defaulter.default(request("UPDATE", later, later), later)
    assert later["spec"] == {}
