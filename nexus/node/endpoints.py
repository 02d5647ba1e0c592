"""Where a tenant's astromesh-node lives, and how this process reaches it."""

from __future__ import annotations

import builtins
from typing import Protocol

from nexus.node.errors import NodeError
from nexus.node.names import NODE_NAME, NODE_PORT
from nexus.node.pods import pod_ip, serving_pod
from nexus.runtime.client import Client
from nexus.runtime.objects import Object
from nexus.runtime.resource import PODS, Resource

__all__ = [
    "DNS_MODE",
    "NODE_NAME",
    "NODE_PORT",
    "POD_MODE",
    "PROXY_MODE",
    "NodeEndpoints",
    "PodLister",
    "in_cluster_endpoint",
    "per_tenant_endpoint",
]

#: ``--node-endpoint`` values with a meaning of their own; anything else is a URL or a
#: template with ``{namespace}``.
DNS_MODE = "dns"
PROXY_MODE = "proxy"
POD_MODE = "pod"


class PodLister(Protocol):
    """Lists cached pods of a namespace (the manager's informer cache)."""

    def list(self, resource: Resource, namespace: str | None = None) -> builtins.list[Object]: ...


def per_tenant_endpoint(setting: str) -> bool:
    """Whether ``--node-endpoint=setting`` sends each tenant's calls to that tenant's own node
    (rather than one URL shared by all tenants)."""
    setting = setting.strip() or DNS_MODE
    return setting in (DNS_MODE, PROXY_MODE, POD_MODE) or "{namespace}" in setting


def in_cluster_endpoint(namespace: str) -> str:
    """The node's URL inside the cluster (its Service's DNS name)."""
    return f"http://{NODE_NAME}.{namespace}.svc:{NODE_PORT}"


class NodeEndpoints:
    """Resolves the base URL of a tenant's node from its namespace.

    * ``dns`` (default): ``http://astromesh-node.<ns>.svc:8000``, for a manager in the cluster;
    * ``proxy``: the API server's service proxy, for a manager run outside the cluster;
    * ``pod``: ``http://<podIP>:8000`` of the tenant's Ready node pod, read from the pod cache
      (``pods``): no cluster DNS needed, so it serves the local node agent and any cluster
      whose pod network the manager can reach. A tenant without a Ready pod fails the call at
      once (a :class:`NodeError` with status 0), as an unreachable node does;
    * a URL or a template with ``{namespace}``: local development and tests (no kubelet).
    """

    def __init__(
        self,
        setting: str = DNS_MODE,
        kube: Client | None = None,
        pods: PodLister | None = None,
    ) -> None:
        self.setting = setting.strip() or DNS_MODE
        if self.setting == PROXY_MODE and kube is None:
            raise ValueError("the proxy node endpoint needs a Kubernetes client")
        if self.setting == POD_MODE and pods is None:
            raise ValueError("the pod node endpoint needs the pod cache")
        self.kube = kube
        self.pods = pods

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
        if self.setting == POD_MODE:
            return self._pod_url(namespace)
        return self.setting.replace("{namespace}", namespace).rstrip("/")

    def _pod_url(self, namespace: str) -> str:
        assert self.pods is not None
        pod = serving_pod(self.pods.list(PODS, namespace))
        ip = pod_ip(pod) if pod is not None else None
        if ip is None:
            raise NodeError(0, f"no Ready {NODE_NAME} pod in namespace {namespace}")
        host = f"[{ip}]" if ":" in ip else ip
        return f"http://{host}:{NODE_PORT}"
