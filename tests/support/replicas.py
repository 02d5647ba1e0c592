"""Two `nexus manager` replicas on one PostgreSQL database, with leader election, for the tests.

Both serve the REST API (each on its own port) and share the JWT secret, as the pods of one
Deployment would; only the leader runs the controllers.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES

from .faults import NexusManager, eventually

PASSWORD = "correct-horse-battery-staple"
LEASE, RENEW, RETRY = 4.0, 3.0, 0.5

# /auth/* is limited per client address, now across replicas: every session gets an address
# of its own from 127.0.3.0/24 (any 127.0.0.0/8 address reaches the loopback).
_addresses = itertools.count(1)


def session() -> aiohttp.ClientSession:
    n = next(_addresses)
    address = f"127.0.{3 + n // 250}.{n % 250 + 1}"
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0)),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def call(
    s: aiohttp.ClientSession, method: str, url: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    async with s.request(method, url, json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@dataclass
class Pair:
    a: NexusManager
    b: NexusManager
    namespace: str
    lease: str
    database: str

    @property
    def replicas(self) -> tuple[NexusManager, NexusManager]:
        return self.a, self.b

    async def leads(self, m: NexusManager) -> bool:
        try:
            metrics = await m.metrics()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return metrics.value("leader_election_master_status", name=self.lease) == 1.0

    async def leader(self, timeout: float = LEASE + 10) -> tuple[NexusManager, NexusManager]:
        """(leader, standby) once exactly one of the two leads."""

        async def one() -> tuple[NexusManager, NexusManager] | None:
            a, b = await asyncio.gather(self.leads(self.a), self.leads(self.b))
            if a != b:
                return (self.a, self.b) if a else (self.b, self.a)
            return None

        found = await eventually(one, timeout=timeout, interval=0.1, message="one leader")
        assert found is not None
        return found

    async def stop(self) -> list[int]:
        return list(await asyncio.gather(*(m.stop() for m in self.replicas)))


async def start_pair(
    envtest: Environment, kube: Client, database: str, workdir: Path, *, node_url: str
) -> Pair:
    """Two replicas booted at the same moment on ``database`` (a fresh one migrates once)."""
    uid = uuid.uuid4().hex[:6]
    namespace = f"ha-{uid}"
    await kube.create(NAMESPACES, {"metadata": {"name": namespace}})
    lease = f"nexus-ha-{uid}"
    secret = secrets.token_urlsafe(48)

    def replica(tag: str) -> NexusManager:
        return NexusManager(
            envtest.kubeconfig_path,
            workdir / tag,
            node_url=node_url,
            api=True,
            jwt_secret=secret,
            database=database,
            extra=[
                f"--namespace={namespace}",
                "--leader-elect",
                f"--leader-election-id={lease}",
                f"--lease-duration={LEASE}",
                f"--renew-deadline={RENEW}",
                f"--retry-period={RETRY}",
            ],
        )

    pair = Pair(replica("a"), replica("b"), namespace, lease, database)
    try:
        await asyncio.gather(pair.a.start(), pair.b.start())
    except BaseException:
        await pair.stop()
        raise
    return pair


async def register(s: aiohttp.ClientSession, url: str, email: str) -> dict[str, Any]:
    status, body = await call(
        s, "POST", f"{url}/auth/register",
        {"email": email, "password": PASSWORD, "displayName": "User"},
    )  # fmt: skip
    assert status == 201, body
    result: dict[str, Any] = body
    return result


async def tenant_with_key(s: aiohttp.ClientSession, url: str, access: str) -> tuple[str, str, str]:
    """(tenant id, raw key, key hash) of a new tenant made through ``url``."""
    auth = {"Authorization": f"Bearer {access}"}
    status, tenant = await call(
        s, "POST", f"{url}/api/v1/tenants", {"displayName": "HA", "nodeProfile": "full"}, **auth
    )
    assert status == 201, tenant
    status, key = await call(
        s, "POST", f"{url}/api/v1/tenants/{tenant['id']}/keys", {"label": "ha"}, **auth
    )
    assert status == 201, key
    return tenant["id"], key["rawKey"], key["hash"]
