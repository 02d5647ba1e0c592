"""Registers the tenant and agent controllers, and the watches that feed them, on a manager."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nexus.controllers.agent import (
    TENANT_BY_NAMESPACE,
    AgentSettings,
    NexusAgentReconciler,
    tenant_namespace_index,
)
from nexus.controllers.node_client import NodeClient, NodeEndpoints
from nexus.controllers.tenant import NexusTenantReconciler, TenantSettings
from nexus.resources import AGENTS, TENANT_LABEL, TENANT_NAMESPACE_LABEL, TENANTS
from nexus.runtime import (
    Builder,
    ControllerOptions,
    Manager,
    Request,
    enqueue_from_labels,
)
from nexus.runtime.predicates import DeletionOrFinalizersChanged, Funcs, GenerationChanged, Or
from nexus.runtime.resource import (
    DEPLOYMENTS,
    LIMIT_RANGES,
    NAMESPACES,
    NETWORK_POLICIES,
    RESOURCE_QUOTAS,
    SERVICE_ACCOUNTS,
    SERVICES,
)

Object = dict[str, Any]


@dataclass(frozen=True)
class ControllerSettings:
    tenant: TenantSettings = field(default_factory=TenantSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    node_endpoint: str = "dns"
    tenant_concurrency: int = 16
    agent_concurrency: int = 16
    node_timeout: float = 10.0


@dataclass
class Controllers:
    tenant: NexusTenantReconciler
    agent: NexusAgentReconciler
    node: NodeClient


def _status_changed(old: Object, new: Object) -> bool:
    o, n = old.get("status") or {}, new.get("status") or {}
    return o.get("phase") != n.get("phase") or o.get("namespace") != n.get("namespace")


def setup_controllers(mgr: Manager, settings: ControllerSettings) -> Controllers:
    tenant_ns = settings.tenant.namespace
    tenants = mgr.cache.informer_for(TENANTS, namespace=tenant_ns)
    tenants.add_indexer(TENANT_BY_NAMESPACE, tenant_namespace_index)
    node = NodeClient(
        NodeEndpoints(settings.node_endpoint, mgr.client), timeout=settings.node_timeout
    )

    tenant_rec = NexusTenantReconciler(mgr, settings.tenant)
    children = enqueue_from_labels(TENANT_LABEL, TENANT_NAMESPACE_LABEL)
    selector = TENANT_LABEL  # existence: only objects Nexus created are cached

    def agent_to_tenant(agent: Object) -> Iterable[Request]:
        for t in tenants.by_index(TENANT_BY_NAMESPACE, agent["metadata"]["namespace"]):
            yield Request(name=t["metadata"]["name"], namespace=t["metadata"]["namespace"])

    (
        Builder(mgr)
        .named("nexustenant")
        .for_(TENANTS, Or(GenerationChanged(), DeletionOrFinalizersChanged()), namespace=tenant_ns)
        .watches(NAMESPACES, children, label_selector=selector)
        .watches(DEPLOYMENTS, children, label_selector=selector)
        .watches(SERVICES, children, label_selector=selector)
        # The namespace's fence (see fence.py).
        .watches(SERVICE_ACCOUNTS, children, label_selector=selector)
        .watches(NETWORK_POLICIES, children, label_selector=selector)
        .watches(RESOURCE_QUOTAS, children, label_selector=selector)
        .watches(LIMIT_RANGES, children, label_selector=selector)
        # agentCount follows agents coming and going.
        .watches(
            AGENTS,
            agent_to_tenant,
            Funcs(on_update=lambda o, n: DeletionOrFinalizersChanged().update(o, n)),
        )
        .with_options(ControllerOptions(max_concurrent_reconciles=settings.tenant_concurrency))
        .complete(tenant_rec)
    )

    agent_rec = NexusAgentReconciler(mgr, node, settings.agent)

    def tenant_to_agents(tenant: Object) -> Iterable[Request]:
        ns = (tenant.get("status") or {}).get("namespace")
        if not ns:
            return ()
        return [
            Request(name=a["metadata"]["name"], namespace=ns) for a in mgr.cache.list(AGENTS, ns)
        ]

    def quota_or_status_changed(old: Object, new: Object) -> bool:
        return (
            _status_changed(old, new)
            or (old.get("spec") or {}).get("resourceQuota")
            != (new.get("spec") or {}).get("resourceQuota")
            or (old.get("status") or {}).get("agentCount")
            != (new.get("status") or {}).get("agentCount")
        )

    (
        Builder(mgr)
        .named("nexusagent")
        .for_(AGENTS, Or(GenerationChanged(), DeletionOrFinalizersChanged()))
        # Agents waiting for their tenant wake when it is Ready; quota changes and deletions
        # in the tenant (agentCount) re-check agents held back by maxAgents.
        .watches(
            TENANTS,
            tenant_to_agents,
            Funcs(on_update=quota_or_status_changed),
            namespace=tenant_ns,
        )
        .with_options(ControllerOptions(max_concurrent_reconciles=settings.agent_concurrency))
        .complete(agent_rec)
    )
    return Controllers(tenant=tenant_rec, agent=agent_rec, node=node)
