"""HTTP client for a tenant's astromesh-node, and how the node is reached.

The node answers ``{"detail": ...}`` on errors; callers get :class:`NodeError` with the status
and that message. Every call is time-boxed: a node that hangs must not hold a reconcile worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from nexus.resources import NODE_NAME, NODE_PORT, in_cluster_endpoint
from nexus.runtime.client import Client

#: ``--node-endpoint`` values with a meaning of their own; anything else is a URL or a
#: template with ``{namespace}``.
DNS_MODE = "dns"
PROXY_MODE = "proxy"


class NodeError(Exception):
    """The node answered with an error status, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"node {status or 'unreachable'}: {message}")

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def permanent(self) -> bool:
        """A rejected spec: retrying the same spec cannot succeed."""
        return self.status in (400, 409, 422)


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


class NodeClient:
    """Calls the node API of any tenant; one aiohttp session for all of them."""

    def __init__(
        self,
        endpoints: NodeEndpoints,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.endpoints = endpoints
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self.endpoints.via_proxy:
                assert self.endpoints.kube is not None
                # Through the API server: reuse its TLS settings and credentials.
                self._session = self.endpoints.kube.session
            else:
                self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self.endpoints.via_proxy:
            await self._session.close()
        self._session = None

    async def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.endpoints.via_proxy:
            assert self.endpoints.kube is not None
            await self.endpoints.kube.api_client.update_params_for_auth(
                headers, [], ["BearerToken"]
            )
        return headers

    async def request(
        self,
        namespace: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        url = self.endpoints.base_url(namespace) + path
        try:
            async with self._get_session().request(
                method,
                url,
                json=body,
                params=params,
                headers=await self._headers(),
                timeout=self._timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise NodeError(resp.status, _detail(raw) or resp.reason or "error")
                return json.loads(raw) if raw else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NodeError(
                0, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ) from exc
        except ValueError as exc:
            raise NodeError(502, f"invalid JSON from node: {exc}") from exc

    # -- the node API ---------------------------------------------------------------------

    async def health(self, namespace: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(namespace, "GET", "/v1/health")
        return result

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request(namespace, "GET", f"/v1/agents/{name}")
        except NodeError as exc:
            if exc.not_found:
                return None
            raise
        return result

    async def list_agents(self, namespace: str) -> list[dict[str, Any]]:
        result = await self.request(namespace, "GET", "/v1/agents")
        agents: list[dict[str, Any]] = (result or {}).get("agents") or []
        return agents

    async def register(self, namespace: str, spec: Mapping[str, Any]) -> None:
        await self.request(namespace, "POST", "/v1/agents", body=spec)

    async def deploy(self, namespace: str, name: str) -> None:
        await self.request(namespace, "POST", f"/v1/agents/{name}/deploy")

    async def pause(self, namespace: str, name: str) -> None:
        await self.request(namespace, "POST", f"/v1/agents/{name}/pause")

    async def delete(self, namespace: str, name: str) -> None:
        await self.request(namespace, "DELETE", f"/v1/agents/{name}")

    async def traces(self, namespace: str, name: str, limit: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            namespace, "GET", "/v1/traces/", params={"agent": name, "limit": str(limit)}
        )
        return result

    async def metrics(self, namespace: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(namespace, "GET", "/v1/metrics/")
        return result

    async def system_status(self, namespace: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(namespace, "GET", "/v1/system/status")
        return result


def _detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:300].decode(errors="replace")
    if isinstance(body, dict):
        detail = body.get("detail", body.get("error", ""))
        return detail if isinstance(detail, str) else json.dumps(detail)[:300]
    return str(body)[:300]
