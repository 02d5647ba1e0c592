"""The adapter to astromesh-node, the per-tenant server that runs a tenant's agents.

``endpoints`` knows where a tenant's node lives and how this process reaches it, ``pods``
which pods are nodes and which one serves a tenant, ``client`` speaks its HTTP API,
``errors`` is how a call fails. Both the controllers and the REST API use it; it knows
nothing of either.
"""

from nexus.node.client import NODE_CONNECT_TIMEOUT, NodeClient
from nexus.node.endpoints import (
    DNS_MODE,
    POD_MODE,
    PROXY_MODE,
    NodeEndpoints,
    PodLister,
    in_cluster_endpoint,
    per_tenant_endpoint,
)
from nexus.node.errors import NodeError
from nexus.node.names import NODE_NAME, NODE_PORT
from nexus.node.pods import NODE_POD_LABELS, NODE_POD_SELECTOR

__all__ = [
    "DNS_MODE",
    "NODE_CONNECT_TIMEOUT",
    "NODE_NAME",
    "NODE_POD_LABELS",
    "NODE_POD_SELECTOR",
    "NODE_PORT",
    "POD_MODE",
    "PROXY_MODE",
    "NodeClient",
    "NodeEndpoints",
    "NodeError",
    "PodLister",
    "in_cluster_endpoint",
    "per_tenant_endpoint",
]
