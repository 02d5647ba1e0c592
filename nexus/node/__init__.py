"""The adapter to astromesh-node, the per-tenant server that runs a tenant's agents.

``endpoints`` knows where a tenant's node lives and how this process reaches it, ``client``
speaks its HTTP API, ``errors`` is how a call fails. Both the controllers and the REST API use
it; it knows nothing of either.
"""

from nexus.node.client import NODE_CONNECT_TIMEOUT, NodeClient
from nexus.node.endpoints import (
    DNS_MODE,
    NODE_NAME,
    NODE_PORT,
    PROXY_MODE,
    NodeEndpoints,
    in_cluster_endpoint,
)
from nexus.node.errors import NodeError

__all__ = [
    "DNS_MODE",
    "NODE_CONNECT_TIMEOUT",
    "NODE_NAME",
    "NODE_PORT",
    "PROXY_MODE",
    "NodeClient",
    "NodeEndpoints",
    "NodeError",
    "in_cluster_endpoint",
]
