"""A user of the REST API with one tenant and one API key: what tests do as a new user would.

``Account.open(session, base_url, ...)`` registers a user, creates a tenant and an API key;
the other methods wait for the tenant and drive agents through the API. Direct calls to a
node (``node_agent``, ``node_agents``) check what actually landed on a node process.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

#: Generous: a node pod's readiness probe runs every 10 s, and the machine is shared.
READY_TIMEOUT = 120.0


def agent_spec(name: str, *, description: str = "", model: str = "llama3.1:8b") -> dict[str, Any]:
    """An astromesh Agent document, as a user posts it."""
    return {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": name, "version": "1.0.0"},
        "spec": {
            "identity": {"display_name": f"Bot {name}", "description": description},
            "model": {"primary": {"provider": "ollama", "model": model}},
            "orchestration": {"pattern": "react"},
        },
    }


@dataclass
class Account:
    session: aiohttp.ClientSession
    base: str
    email: str
    access: str = ""
    tenant: str = ""
    key: str = ""
    namespace: str = ""

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, base: str, display_name: str = "Tenant"
    ) -> Account:
        """Register a fresh user, create its tenant and an API key."""
        acct = cls(session, base.rstrip("/"), f"user-{secrets.token_hex(5)}@example.com")
        password = "pw-" + secrets.token_urlsafe(12)
        status, body = await acct.call(
            "POST",
            "/auth/register",
            {"email": acct.email, "password": password, "displayName": display_name[:20]},
            auth=False,
        )
        assert status == 201, body
        acct.access = body["accessToken"]
        status, body = await acct.call(
            "POST",
            "/api/v1/tenants",
            {"displayName": display_name, "nodeProfile": "full"},
            auth="token",
        )
        assert status == 201, body
        acct.tenant = body["id"]
        status, body = await acct.call(
            "POST", f"/api/v1/tenants/{acct.tenant}/keys", {"label": "test"}, auth="token"
        )
        assert status == 201, body
        acct.key = body["rawKey"]
        return acct

    async def call(
        self, method: str, path: str, body: Any = None, *, auth: bool | str = "key"
    ) -> tuple[int, Any]:
        headers: dict[str, str] = {}
        if auth == "token":
            headers["Authorization"] = f"Bearer {self.access}"
        elif auth:
            headers["X-API-Key"] = self.key
        async with self.session.request(method, self.base + path, json=body, headers=headers) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, await r.text()

    async def tenant_status(self) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/v1/tenants/{self.tenant}", auth="token")
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        """The tenant's namespace, once its phase is Ready."""
        body = await self.wait_tenant(lambda b: b.get("phase") == "Ready", timeout)
        self.namespace = body["namespace"]
        return self.namespace

    async def wait_tenant(self, check: Any, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body = await self.tenant_status()
        while not check(body):
            if time.monotonic() > deadline:
                raise AssertionError(f"tenant {self.tenant} not there in {timeout}s: {body}")
            await asyncio.sleep(0.5)
            body = await self.tenant_status()
        return body

    async def create_agent(self, spec: dict[str, Any]) -> dict[str, Any]:
        status, body = await self.call("POST", "/api/v1/agents", spec)
        assert status == 201, body
        result: dict[str, Any] = body
        return result

    async def update_agent(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = spec["metadata"]["name"]
        status, body = await self.call("PUT", f"/api/v1/agents/{name}", spec)
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def delete_agent(self, name: str) -> None:
        status, body = await self.call("DELETE", f"/api/v1/agents/{name}")
        assert status == 200, body

    async def agent(self, name: str) -> dict[str, Any] | None:
        status, body = await self.call("GET", f"/api/v1/agents/{name}")
        if status == 404:
            return None
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def wait_agent(
        self, name: str, phase: str = "Running", timeout: float = READY_TIMEOUT
    ) -> dict[str, Any]:
        """The agent once its phase is ``phase`` (and acknowledged by the node if Running)."""
        deadline = time.monotonic() + timeout
        while True:
            body = await self.agent(name)
            st = (body or {}).get("status") or {}
            if st.get("phase") == phase and (phase != "Running" or st.get("nodeAck")):
                assert body is not None
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"agent {name} of {self.tenant} not {phase}: {body}")
            await asyncio.sleep(0.3)

    async def delete_tenant(self) -> None:
        status, body = await self.call("DELETE", f"/api/v1/tenants/{self.tenant}", auth="token")
        assert status in (200, 404), body


async def node_agent(url: str, name: str) -> dict[str, Any] | None:
    """``GET /v1/agents/<name>`` on a node process itself (None: not there)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(f"{url}/v1/agents/{name}") as r,
    ):
        if r.status == 404:
            return None
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def node_agents(url: str) -> dict[str, str]:
    """name -> status of every agent on a node process."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(f"{url}/v1/agents") as r,
    ):
        assert r.status == 200, await r.text()
        body = await r.json()
    return {a["name"]: a["status"] for a in body["agents"]}


def description(node_doc: dict[str, Any] | None) -> str | None:
    """The identity description of an agent as a node holds it."""
    if node_doc is None:
        return None
    value = ((node_doc.get("spec") or {}).get("identity") or {}).get("description")
    return str(value) if value is not None else None
