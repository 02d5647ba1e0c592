"""What wakes which reconciler: the tenant-by-namespace index, predicates and map functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nexus.controllers.ports import CacheReader
from nexus.domain.resources import AGENTS, TENANTS
from nexus.domain.tenant import TenantSpec, TenantStatus
from nexus.runtime.objects import Object
from nexus.runtime.predicates import DeletionOrFinalizersChanged
from nexus.runtime.reconcile import Request

#: Index on the tenant informer: the namespace a tenant owns -> that tenant.
TENANT_BY_NAMESPACE = "status.namespace"


def tenant_namespace_index(tenant: Object) -> list[str]:
    ns = TenantStatus.of(tenant).namespace
    return [ns] if ns else []


def tenant_status_changed(old: Object, new: Object) -> bool:
    """The tenant became (or stopped being) Ready, or owns another namespace."""
    o, n = TenantStatus.of(old), TenantStatus.of(new)
    return o.phase != n.phase or o.namespace != n.namespace


def tenant_matters_to_agents(old: Object, new: Object) -> bool:
    """An update of a tenant that can change what its agents should do.

    Agents waiting for their tenant wake when it is Ready; a quota change, or an agent of the
    tenant going away (``agentCount``), re-checks agents held back by ``maxAgents``.
    """
    return (
        tenant_status_changed(old, new)
        or TenantSpec.of(old).quota != TenantSpec.of(new).quota
        or TenantStatus.of(old).agent_count != TenantStatus.of(new).agent_count
    )


_DELETION_OR_FINALIZERS = DeletionOrFinalizersChanged()


def agent_count_may_change(old: Object, new: Object) -> bool:
    """An update of an agent that can change its tenant's ``agentCount`` (its deletion)."""
    return _DELETION_OR_FINALIZERS.update(old, new)


def tenants_of_agent(
    cache: CacheReader, system_namespace: str
) -> Callable[[Object], Iterable[Request]]:
    """Maps an agent to the tenant that owns its namespace."""

    def to_tenants(agent: Object) -> Iterable[Request]:
        ns = agent["metadata"]["namespace"]
        for t in cache.by_index(TENANTS, TENANT_BY_NAMESPACE, ns, system_namespace):
            yield Request(name=t["metadata"]["name"], namespace=t["metadata"]["namespace"])

    return to_tenants


def agents_of_tenant(cache: CacheReader) -> Callable[[Object], Iterable[Request]]:
    """Maps a tenant to every agent in the namespace it owns."""

    def to_agents(tenant: Object) -> Iterable[Request]:
        ns = TenantStatus.of(tenant).namespace
        if not ns:
            return ()
        return [Request(name=a["metadata"]["name"], namespace=ns) for a in cache.list(AGENTS, ns)]

    return to_agents
