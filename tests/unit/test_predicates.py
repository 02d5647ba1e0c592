"""Which events wake which reconciler: predicates, map functions and the tenant index."""

from __future__ import annotations

import copy

from nexus.controllers.watches import (
    TENANT_BY_NAMESPACE,
    agent_count_may_change,
    agents_of_tenant,
    tenant_matters_to_agents,
    tenant_namespace_index,
    tenant_status_changed,
    tenants_of_agent,
)
from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime import Request
from nexus.runtime.predicates import DeletionOrFinalizersChanged, GenerationChanged, Or

from ..support.fakes import SYSTEM_NS, FakeApiServer, FakeCache, agent, ready_tenant, tenant

# What both controllers use for their primary resource.
PRIMARY = Or(GenerationChanged(), DeletionOrFinalizersChanged())


def changed(obj: dict, path: str, value: object) -> dict:
    new = copy.deepcopy(obj)
    *parents, leaf = path.split(".")
    here = new
    for p in parents:
        here = here.setdefault(p, {})
    here[leaf] = value
    return new


# -- the primary resources ----------------------------------------------------------------------


def test_a_spec_change_passes() -> None:
    old = ready_tenant("acme")
    old["metadata"]["generation"] = 1
    assert PRIMARY.update(old, changed(old, "metadata.generation", 2))


def test_a_status_write_does_not_pass() -> None:
    old = ready_tenant("acme")
    old["metadata"]["generation"] = 1
    new = changed(old, "status.agentCount", 3)
    new["metadata"]["resourceVersion"] = "99"
    assert not PRIMARY.update(old, new)


def test_a_deletion_or_a_finalizer_change_passes() -> None:
    old = ready_tenant("acme")
    assert PRIMARY.update(old, changed(old, "metadata.deletionTimestamp", "2026-01-01T00:00:00Z"))
    assert PRIMARY.update(old, changed(old, "metadata.finalizers", []))


def test_creates_and_deletes_always_pass() -> None:
    assert PRIMARY.create(tenant("acme")) and PRIMARY.delete(tenant("acme"))


# -- tenant updates that wake agents --------------------------------------------------------------


def test_a_tenant_becoming_ready_wakes_its_agents() -> None:
    old = ready_tenant("acme")
    old["status"]["phase"] = "Provisioning"
    assert tenant_status_changed(old, ready_tenant("acme"))
    assert tenant_matters_to_agents(old, ready_tenant("acme"))


def test_a_quota_change_wakes_the_agents() -> None:
    old = ready_tenant("acme")
    assert tenant_matters_to_agents(old, changed(old, "spec.resourceQuota.maxAgents", 11))


def test_an_agent_count_change_wakes_the_agents() -> None:
    old = ready_tenant("acme")
    assert tenant_matters_to_agents(old, changed(old, "status.agentCount", 1))


def test_other_tenant_updates_do_not_wake_agents() -> None:
    old = ready_tenant("acme")
    assert not tenant_matters_to_agents(old, changed(old, "metadata.labels", {"x": "y"}))
    assert not tenant_matters_to_agents(old, changed(old, "spec.displayName", "Renamed"))
    assert not tenant_status_changed(old, changed(old, "status.message", "still fine"))


# -- agent updates that wake the tenant -----------------------------------------------------------


def test_an_agent_deletion_wakes_its_tenant() -> None:
    old = agent("bot", "acme")
    new = changed(old, "metadata.deletionTimestamp", "2026-01-01T00:00:00Z")
    assert agent_count_may_change(old, new)


def test_an_agent_status_write_does_not_wake_its_tenant() -> None:
    old = agent("bot", "acme")
    assert not agent_count_may_change(old, changed(old, "status.phase", "Running"))


# -- map functions and the index ----------------------------------------------------------------


def world() -> FakeCache:
    server = FakeApiServer()
    server.put(TENANTS, ready_tenant("acme"))
    pending = tenant("beta")  # no namespace yet
    server.put(TENANTS, pending)
    server.put(AGENTS, agent("a1", "acme"))
    server.put(AGENTS, agent("a2", "acme"))
    server.put(AGENTS, agent("z", "elsewhere"))
    cache = FakeCache(server, {(TENANTS, TENANT_BY_NAMESPACE): tenant_namespace_index})
    cache.sync()
    return cache


def test_the_index_holds_the_namespace_a_tenant_owns() -> None:
    assert tenant_namespace_index(ready_tenant("acme")) == ["acme"]
    assert tenant_namespace_index(tenant("beta")) == []


def test_an_agent_maps_to_the_tenant_owning_its_namespace() -> None:
    to_tenants = tenants_of_agent(world(), SYSTEM_NS)
    assert list(to_tenants(agent("a1", "acme"))) == [Request(name="acme", namespace=SYSTEM_NS)]
    assert list(to_tenants(agent("z", "elsewhere"))) == []


def test_a_tenant_maps_to_the_agents_of_its_namespace() -> None:
    to_agents = agents_of_tenant(world())
    assert sorted(r.name for r in to_agents(ready_tenant("acme"))) == ["a1", "a2"]
    assert list(to_agents(tenant("beta"))) == []
