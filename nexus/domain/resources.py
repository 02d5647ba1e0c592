"""The ``nexus.astromesh.io/v1alpha1`` API: resources, labels, finalizers and phases."""

from __future__ import annotations

from enum import StrEnum

from nexus.runtime.resource import Resource

GROUP = "nexus.astromesh.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

TENANTS = Resource(GROUP, VERSION, "nexustenants", "NexusTenant")
AGENTS = Resource(GROUP, VERSION, "nexusagents", "NexusAgent")

TENANT_FINALIZER = f"{GROUP}/tenant-cleanup"
AGENT_FINALIZER = f"{GROUP}/agent-cleanup"

#: On every namespace Nexus creates.
MANAGED_LABEL = f"{GROUP}/managed"
#: On every child object: the owning tenant's name and namespace (owner references cannot
#: cross namespaces, and a namespace cannot be owned by a namespaced object).
TENANT_LABEL = f"{GROUP}/tenant"
TENANT_NAMESPACE_LABEL = f"{GROUP}/tenant-namespace"
#: On every NexusTenant: the id of its tenant in the REST API's store.
TENANT_ID_LABEL = f"{GROUP}/tenant-id"

#: In ``metadata.labels`` of every agent spec Nexus sends to a node: the namespace of the
#: NexusAgent it came from. It marks the agents on a node that Nexus deployed: only those are
#: ever pruned, and only by the tenant of that namespace (the node keeps the labels as given).
AGENT_NAMESPACE_LABEL = f"{GROUP}/agent-namespace"

#: Conditions of a NexusTenant besides Ready: whether its node Deployment has an available pod.
NODE_AVAILABLE = "NodeAvailable"
#: Reason of a tenant's (and its agents') Ready=False while the tenant's node is not available.
WAITING_FOR_NODE = "WaitingForNode"

#: On the manager's namespace and pods (config/manager): tenant nodes admit traffic only from
#: pods with this label in namespaces with this label (1.20 has no namespace-name label).
MANAGER_LABEL = f"{GROUP}/manager"


class TenantPhase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    ERROR = "Error"


class AgentPhase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    RUNNING = "Running"
    FAILED = "Failed"
    STOPPED = "Stopped"
