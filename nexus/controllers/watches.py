"""What wakes which reconciler: the tenant-by-namespace index, predicates and map functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nexus.controllers.ports import CacheReader
from nexus.domain.resources import AGENTS, TENANTS
from nexus.domain.tenant import TenantSpec, TenantStatus
from nexus.node.pods import is_ready, is_terminating, pod_ip, restart_count
from nexus.runtime.objects import Object
from nexus.runtime.predicates import DeletionOrFinalizersChanged
from nexus.runtime.reconcile import Request

#: Index on the tenant informer: the namespace a tenant owns -> that tenant.
TENANT_BY_NAMESPACE = "status.namespace"


def tenant_namespace_index(tenant: Object) -> list[str]:
    ns = TenantStatus.of(tenant).namespace
    return [ns] if ns else []


def tenant_status_changed(old: Object, new: Object) -> bool:
    """The tenant became (or stopped being) Ready, owns another namespace, or its node
    became (or stopped being) available."""
    o, n = TenantStatus.of(old), TenantStatus.of(new)
    return (
        o.phase != n.phase
        or o.namespace != n.namespace
        or o.node_available != n.node_available
        or o.reason != n.reason
    )


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
    """Maps an agent (or any object of a tenant namespace: a node pod) to the tenant that
    owns its namespace."""

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


def agents_of_namespace(cache: CacheReader) -> Callable[[Object], Iterable[Request]]:
    """Maps an object of a tenant namespace (a node pod) to every agent in that namespace."""

    def to_agents(obj: Object) -> Iterable[Request]:
        ns = obj["metadata"].get("namespace")
        if not ns:
            return ()
        return [Request(name=a["metadata"]["name"], namespace=ns) for a in cache.list(AGENTS, ns)]

    return to_agents


def _serving(pod: Object) -> tuple[object, ...]:
    meta = pod["metadata"]
    return (meta.get("uid"), pod_ip(pod), is_ready(pod), restart_count(pod), is_terminating(pod))


def node_pod_restarted(old: Object, new: Object) -> bool:
    """An update of a node pod after which its agents may be gone from it: it became (or
    stopped being) ready, restarted, moved to another address, or is going away. (A pod that
    replaces another arrives as a create, which always passes.)"""
    return _serving(old) != _serving(new)


def _summary(pod: Object) -> tuple[object, ...]:
    st = pod.get("status") or {}
    conditions = tuple(
        (c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
        for c in st.get("conditions") or ()
        if c.get("type") in ("PodScheduled", "Ready")
    )
    waiting = tuple(
        tuple(sorted(((cs.get("state") or {}).get("waiting") or {}).items()))
        for kind in ("initContainerStatuses", "containerStatuses")
        for cs in st.get(kind) or ()
    )
    return (*_serving(pod), st.get("phase"), st.get("message"), conditions, waiting)


def node_pod_status_changed(old: Object, new: Object) -> bool:
    """An update of a node pod that can change its tenant's ``NodeAvailable`` message (see
    ``availability``): scheduling, readiness, a container waiting, a restart."""
    return _summary(old) != _summary(new)
