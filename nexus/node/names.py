"""The names every tenant's node has: its Deployment and Service, and its port."""

from __future__ import annotations

#: Name of the node's Deployment and Service in every tenant namespace.
NODE_NAME = "astromesh-node"
#: The port the node serves its HTTP API on (container and Service).
NODE_PORT = 8000
