"""Case 10: `nexus manager` SIGKILLed during concurrent writes through its REST API.

API keys are created in a loop on two tenants, and users register in parallel (each worker from
its own loopback address: registration is rate limited per client address). The manager is
killed mid-stream and restarted on the same database: every write that was acknowledged with
201 must be there (the keys authenticate, the users can log in) and the database must pass
``PRAGMA integrity_check``. Unlike tests/integration/test_store_durability.py, this goes through
the HTTP handlers and the real process.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment

from ..support.faults import NexusManager, bounded, eventually
from .conftest import make_system_namespace, purge, short_id

pytestmark = pytest.mark.cluster

PASSWORD = "correct-horse-battery-staple"
KEY_WORKERS_PER_TENANT = 3
REGISTER_WORKERS = 4
MIN_KEYS, MIN_USERS = 30, 4


@dataclass
class Acked:
    keys: list[tuple[str, str]] = field(default_factory=list)  # (tenant id, raw key)
    users: list[str] = field(default_factory=list)  # emails
    failures: int = 0  # requests cut short by the kill


def session(address: str = "127.0.0.1") -> aiohttp.ClientSession:
    """A client session whose connections leave from ``address`` (any 127.0.0.0/8 works)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0)),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def post(s: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> tuple[int, Any]:
    async with s.post(url, json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_acknowledged_api_writes_survive_sigkill(
    envtest: Environment, kube: Client, tmp_path: Path
) -> None:
    system_ns = await make_system_namespace(kube, "durable")
    uid = short_id()
    workdir = tmp_path / "mgr"
    extra = [f"--namespace={system_ns}"]
    first = NexusManager(envtest.kubeconfig_path, workdir, extra=extra, api=True)
    acked = Acked()
    second: NexusManager | None = None
    try:
        await first.start()
        url = first.url
        async with session("127.0.0.2") as s:
            status, bundle = await post(
                s,
                f"{url}/auth/register",
                {"email": f"owner-{uid}@example.com", "password": PASSWORD, "displayName": "O"},
            )
            assert status == 201, bundle
            bearer = {"Authorization": f"Bearer {bundle['accessToken']}"}
            tenants = []
            for i in range(2):
                status, tenant = await post(
                    s, f"{url}/api/v1/tenants", {"displayName": f"T{i}"}, **bearer
                )
                assert status == 201, tenant
                tenants.append(tenant["id"])

        stop = asyncio.Event()

        async def make_keys(tenant_id: str) -> None:
            async with session() as s:
                while not stop.is_set():
                    try:
                        status, body = await post(
                            s, f"{url}/api/v1/tenants/{tenant_id}/keys", {"label": "k"}, **bearer
                        )
                    except (aiohttp.ClientError, OSError, ValueError):
                        acked.failures += 1
                        return
                    assert status == 201, body
                    acked.keys.append((tenant_id, body["rawKey"]))

        async def register(worker: int) -> None:
            async with session(f"127.0.0.{10 + worker}") as s:
                i = 0
                while not stop.is_set():
                    email = f"u{worker}-{i}-{uid}@example.com"
                    i += 1
                    body = {"email": email, "password": PASSWORD, "displayName": "U"}
                    try:
                        status, out = await post(s, f"{url}/auth/register", body)
                    except (aiohttp.ClientError, OSError, ValueError):
                        acked.failures += 1
                        return
                    assert status == 201, out
                    acked.users.append(email)

        load = [
            *(make_keys(t) for t in tenants for _ in range(KEY_WORKERS_PER_TENANT)),
            *(register(w) for w in range(REGISTER_WORKERS)),
        ]
        writers = asyncio.gather(*load)
        await eventually(
            lambda: len(acked.keys) >= MIN_KEYS and len(acked.users) >= MIN_USERS,
            timeout=30,
            interval=0.05,
            message=lambda: f"{len(acked.keys)} keys, {len(acked.users)} users",
        )
        await first.stop(signal.SIGKILL)  # writes are in flight
        stop.set()
        await writers
        assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
        print(f"acked before the kill: {len(acked.keys)} keys, {len(acked.users)} users")

        second = NexusManager(
            envtest.kubeconfig_path, workdir, extra=extra, api=True, jwt_secret=first.jwt_secret
        )
        await second.start()
        url = second.url
        async with session() as s:

            async def key_works(item: tuple[str, str]) -> None:
                tenant_id, raw = item
                async with s.get(f"{url}/api/v1/tenants", headers={"X-API-Key": raw}) as r:
                    assert r.status == 200, (raw[:12], await r.text())
                    assert [t["id"] for t in await r.json()] == [tenant_id]

            await bounded(acked.keys, key_works, 16)
            async with s.get(f"{url}/api/v1/tenants", headers=bearer) as r:
                assert r.status == 200
                assert sorted(t["id"] for t in await r.json()) == sorted(tenants)

        # Logins are rate limited per address too: a fresh address for every 20.
        async def can_log_in(item: tuple[int, str]) -> None:
            n, email = item
            async with session(f"127.0.1.{1 + n // 20}") as s:
                status, out = await post(
                    s, f"{url}/auth/login", {"email": email, "password": PASSWORD}
                )
                assert status == 200, (email, out)

        await bounded(list(enumerate(acked.users)), can_log_in, 4)
    finally:
        if second is not None:
            assert await second.stop() == 0, second.log_tail()
        await first.stop(signal.SIGKILL)
        await purge(kube, system_ns)

    conn = sqlite3.connect(workdir / "nexus.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
