"""Registers the tenant and agent controllers, and the watches that feed them, on a manager."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nexus.controllers.agent import AgentSettings, NexusAgentReconciler
from nexus.controllers.cachetrim import configure_cache
from nexus.controllers.ports import NodeApi
from nexus.controllers.tenant import NexusTenantReconciler, TenantSettings
from nexus.controllers.watches import (
    TENANT_BY_NAMESPACE,
    agent_count_may_change,
    agents_of_namespace,
    agents_of_tenant,
    node_pod_restarted,
    node_pod_status_changed,
    tenant_matters_to_agents,
    tenant_namespace_index,
    tenants_of_agent,
)
from nexus.domain.resources import AGENTS, TENANT_LABEL, TENANT_NAMESPACE_LABEL, TENANTS
from nexus.node import NODE_POD_SELECTOR
from nexus.node.pods import is_ready
from nexus.runtime import (
    Builder,
    ControllerOptions,
    Manager,
    OwnWrites,
    Request,
    enqueue_from_labels,
)
from nexus.runtime.objects import Object
from nexus.runtime.predicates import DeletionOrFinalizersChanged, Funcs, GenerationChanged, Or
from nexus.runtime.resource import (
    DEPLOYMENTS,
    LIMIT_RANGES,
    NAMESPACES,
    NETWORK_POLICIES,
    PODS,
    RESOURCE_QUOTAS,
    SERVICE_ACCOUNTS,
    SERVICES,
)

#: Names of the controllers (metrics, logs) and of their event reporters.
TENANT_CONTROLLER = "nexustenant"
AGENT_CONTROLLER = "nexusagent"


@dataclass(frozen=True)
class ControllerSettings:
    tenant: TenantSettings
    agent: AgentSettings
    tenant_concurrency: int
    agent_concurrency: int


@dataclass
class Controllers:
    tenant: NexusTenantReconciler
    agent: NexusAgentReconciler


def _never(_obj: Object) -> bool:
    return False


def node_pods(mgr: Manager) -> None:
    """Declares the informer of tenant node pods (shared by the controllers and the ``pod``
    node endpoint)."""
    mgr.cache.informer_for(PODS, label_selector=NODE_POD_SELECTOR)


def setup_controllers(mgr: Manager, node: NodeApi, settings: ControllerSettings) -> Controllers:
    system_ns = settings.tenant.system_namespace
    # What the cache keeps of each kind (before any informer starts): see cachetrim.
    configure_cache(mgr.cache, settings.tenant)
    tenants = mgr.cache.informer_for(TENANTS, namespace=system_ns)
    tenants.add_indexer(TENANT_BY_NAMESPACE, tenant_namespace_index)
    node_pods(mgr)

    # Each controller's own writes do not wake it again (their watch echoes are dropped):
    # one pass per change instead of a second one that finds everything converged.
    tenant_writes = OwnWrites()
    tenant_rec = NexusTenantReconciler(
        cache=mgr.cache,
        client=tenant_writes.writer(mgr.client),
        events=mgr.event_recorder(f"{TENANT_CONTROLLER}-controller"),
        node=node,
        settings=settings.tenant,
    )
    by_labels = enqueue_from_labels(TENANT_LABEL, TENANT_NAMESPACE_LABEL)

    def children(obj: Object) -> Iterable[Request]:
        # Children are cached cluster-wide; another Nexus (another system namespace) may
        # share the cluster, and its tenants are not ours to reconcile.
        return [r for r in by_labels(obj) if r.namespace == system_ns]

    selector = TENANT_LABEL  # existence: only objects Nexus created are cached
    (
        Builder(mgr)
        .named(TENANT_CONTROLLER)
        .for_(TENANTS, Or(GenerationChanged(), DeletionOrFinalizersChanged()), namespace=system_ns)
        .watches(NAMESPACES, children, label_selector=selector)
        .watches(DEPLOYMENTS, children, label_selector=selector)
        .watches(SERVICES, children, label_selector=selector)
        # The namespace's fence (see fence.py).
        .watches(SERVICE_ACCOUNTS, children, label_selector=selector)
        .watches(NETWORK_POLICIES, children, label_selector=selector)
        .watches(RESOURCE_QUOTAS, children, label_selector=selector)
        .watches(LIMIT_RANGES, children, label_selector=selector)
        # The node's pods: why the node is not available (NodeAvailable's message). A pod
        # coming or going changes the Deployment's status, which wakes the tenant anyway.
        .watches(
            PODS,
            tenants_of_agent(mgr.cache, system_ns),
            Funcs(
                on_create=_never,
                on_update=node_pod_status_changed,
                on_delete=_never,
            ),
            label_selector=NODE_POD_SELECTOR,
        )
        # agentCount follows agents coming and going.
        .watches(
            AGENTS,
            tenants_of_agent(mgr.cache, system_ns),
            Funcs(on_update=agent_count_may_change),
        )
        .with_options(
            ControllerOptions(
                max_concurrent_reconciles=settings.tenant_concurrency, own_writes=tenant_writes
            )
        )
        .complete(tenant_rec)
    )

    agent_writes = OwnWrites()
    agent_rec = NexusAgentReconciler(
        cache=mgr.cache,
        client=agent_writes.writer(mgr.client),
        events=mgr.event_recorder(f"{AGENT_CONTROLLER}-controller"),
        node=node,
        settings=settings.agent,
    )
    (
        Builder(mgr)
        .named(AGENT_CONTROLLER)
        .for_(AGENTS, Or(GenerationChanged(), DeletionOrFinalizersChanged()))
        .watches(
            TENANTS,
            agents_of_tenant(mgr.cache),
            Funcs(on_update=tenant_matters_to_agents),
            namespace=system_ns,
        )
        # A node that restarted or was replaced has lost (or may have lost) its agents: they
        # are synced again at once, not at the next resync.
        .watches(
            PODS,
            agents_of_namespace(mgr.cache),
            Funcs(on_create=is_ready, on_update=node_pod_restarted, on_delete=_never),
            label_selector=NODE_POD_SELECTOR,
        )
        .with_options(
            ControllerOptions(
                max_concurrent_reconciles=settings.agent_concurrency, own_writes=agent_writes
            )
        )
        .complete(agent_rec)
    )
    return Controllers(tenant=tenant_rec, agent=agent_rec)
