"""Where a tenant's astromesh-node lives, and how this process reaches it."""

from __future__ import annotations

from nexus.runtime.client import Client

#: Name of the node's Deployment and Service in every tenant namespace.
NODE_NAME = "astromesh-node"
#: The port the node serves its HTTP API on (container and Service).
NODE_PORT = 8000

#: ``--node-endpoint`` values with a meaning of their own; anything else is a URL or a
#: template with ``{namespace}``.
DNS_MODE = "dns"
PROXY_MODE = "proxy"


def in_cluster_endpoint(namespace: str) -> str:
    """The node's URL inside the cluster (its Service's DNS name)."""
    return f"http://{NODE_NAME}.{namespace}.svc:{NODE_PORT}"


class NodeEndpoints:
    """Resolves the base URL of a tenant's node from its namespace.

    * ``dns`` (default): ``http://astromesh-node.<ns>.svc:8000``, for a manager in the cluster;
    * ``proxy``: the API server's service proxy, for a manager run outside the cluster;
    * a URL or a template with ``{namespace}``: local development and tests (no kubelet).
    """

    def __init__(self, setting: str = DNS_MODE, kube: Client | None = None) -> None:
        self.setting = setting.strip() or DNS_MODE
        if self.setting == PROXY_MODE and kube is None:
            raise ValueError("the proxy node endpoint needs a Kubernetes client")
        self.kube = kube

    @property
    def via_proxy(self) -> bool:
        return self.setting == PROXY_MODE

    def base_url(self, namespace: str) -> str:
        if self.setting == DNS_MODE:
            return in_cluster_endpoint(namespace)
        if self.setting == PROXY_MODE:
            assert self.kube is not None
            return (
                f"{self.kube.host}/api/v1/namespaces/{namespace}/services/"
                f"{NODE_NAME}:{NODE_PORT}/proxy"
            )
        return self.setting.replace("{namespace}", namespace).rstrip("/")
