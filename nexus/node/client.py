"""HTTP client for the astromesh-node API of any tenant.

The node answers ``{"detail": ...}`` on errors; callers get :class:`NodeError` with the status
and that message. Every call is time-boxed: a node that hangs must not hold a reconcile worker
or an API request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from nexus.node.endpoints import NodeEndpoints
from nexus.node.errors import NodeError

#: Time to open a TCP connection to a node (s): a node that is down (or a Service with no
#: ready endpoint) fails this fast instead of using up the whole call's time limit.
NODE_CONNECT_TIMEOUT = 3.0


class NodeClient:
    """Calls the node API of any tenant; one aiohttp session for all of them.

    ``timeout`` bounds each call as a whole (connect, send, wait, read).
    """

    def __init__(
        self,
        endpoints: NodeEndpoints,
        *,
        timeout: float,
        connect_timeout: float = NODE_CONNECT_TIMEOUT,
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
