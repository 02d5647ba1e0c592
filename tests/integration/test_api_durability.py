"""A 201 survives SIGKILL of `nexus manager`.

A burst of concurrent ``POST /auth/register`` (and, beside it, ``POST .../keys`` for one
tenant) runs against a real manager subprocess, which is SIGKILLed mid-burst. The database file
must pass ``PRAGMA integrity_check`` as the kill left it; then a new manager on the same file
must let every user that got a 201 log in, and accept every API key that got a 201.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES

from ..support.manager import ManagerProcess

pytestmark = pytest.mark.cluster

NODE_URL = "http://127.0.0.1:9"  # no agents here: nothing calls a node
WORKERS = 24
ADDRESSES = 12  # register/login are limited to 30/min per client address
KILL_AFTER_USERS = 8
KILL_DEADLINE = 8.0


def _session(i: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(f"127.0.1.{i % ADDRESSES + 1}", 0)),
        timeout=aiohttp.ClientTimeout(total=30),
    )


@pytest.fixture
async def workdir(
    envtest: Environment, kube: Client, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    if await kube.get_or_none(NAMESPACES, "nexus-system") is None:
        await kube.create(NAMESPACES, {"metadata": {"name": "nexus-system"}})
    return tmp_path_factory.mktemp("durability")


async def _post(s: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with s.post(url, **kw) as r:
        return r.status, await r.json()


async def test_acknowledged_writes_survive_sigkill(envtest: Environment, workdir: Path) -> None:
    mgr = ManagerProcess(envtest.kubeconfig_path, workdir, node_url=NODE_URL)
    await mgr.start()
    sessions = [_session(i) for i in range(WORKERS)]
    registered: dict[str, str] = {}  # email -> password, only after a 201
    keys: list[str] = []  # raw keys, only after a 201
    try:
        s0 = sessions[0]
        owner_pw = secrets.token_urlsafe(16)
        status, body = await _post(
            s0,
            f"{mgr.url}/auth/register",
            json={"email": f"owner-{secrets.token_hex(4)}@example.com", "password": owner_pw,
                  "displayName": "Owner"},
        )  # fmt: skip
        assert status == 201, body
        auth = {"Authorization": f"Bearer {body['accessToken']}"}
        status, tenant = await _post(
            s0,
            f"{mgr.url}/api/v1/tenants",
            json={"displayName": "Durable", "nodeProfile": "full"},
            headers=auth,
        )
        assert status == 201, tenant
        tag = secrets.token_hex(3)
        enough = asyncio.Event()

        async def register(i: int) -> None:
            n = 0
            while True:
                email = f"burst-{tag}-{i}-{n}@example.com"
                password = secrets.token_urlsafe(12)
                n += 1
                try:
                    status, _ = await _post(
                        sessions[i],
                        f"{mgr.url}/auth/register",
                        json={"email": email, "password": password, "displayName": f"U{i}"},
                    )
                except (aiohttp.ClientError, OSError):
                    return  # the manager is gone
                if status == 201:
                    registered[email] = password
                    if len(registered) >= KILL_AFTER_USERS:
                        enough.set()
                else:
                    assert status == 429, status

        async def create_keys() -> None:
            url = f"{mgr.url}/api/v1/tenants/{tenant['id']}/keys"
            while True:
                try:
                    status, body = await _post(s0, url, json={"label": "burst"}, headers=auth)
                except (aiohttp.ClientError, OSError):
                    return
                assert status == 201, body
                keys.append(body["rawKey"])

        tasks = [asyncio.create_task(register(i)) for i in range(WORKERS)]
        tasks.append(asyncio.create_task(create_keys()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), KILL_DEADLINE)
        assert await mgr.stop(signal.SIGKILL) == -signal.SIGKILL
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for s in sessions:
            await s.close()
        await mgr.stop(signal.SIGKILL)
    print(f"acknowledged before SIGKILL: {len(registered)} users, {len(keys)} keys")
    assert len(registered) >= 3, "too few registrations before the kill to prove anything"
    assert keys, "no API key was created before the kill"

    # The file as SIGKILL left it (WAL included) is consistent.
    db = workdir / "nexus.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {e for (e,) in conn.execute("SELECT email FROM users")}
    assert set(registered) <= stored

    # A new manager on the same file: every acknowledged user logs in, every key works.
    mgr2 = ManagerProcess(
        envtest.kubeconfig_path, workdir, node_url=NODE_URL, jwt_secret=mgr.jwt_secret
    )
    await mgr2.start()
    sessions = [_session(i) for i in range(ADDRESSES)]
    try:

        async def login(i: int, email: str, password: str) -> None:
            status, body = await _post(
                sessions[i % ADDRESSES],
                f"{mgr2.url}/auth/login",
                json={"email": email, "password": password},
            )
            assert status == 200, (email, body)

        await asyncio.gather(
            *(login(i, e, p) for i, (e, p) in enumerate(sorted(registered.items())))
        )
        for raw in keys:
            async with sessions[0].get(f"{mgr2.url}/api/v1/me", headers={"X-API-Key": raw}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["tenant"]["id"] == tenant["id"]
        async with sessions[0].delete(
            f"{mgr2.url}/api/v1/tenants/{tenant['id']}", headers=auth
        ) as r:
            assert r.status == 200, await r.text()  # same secret: the old access token works
    finally:
        for s in sessions:
            await s.close()
        assert await mgr2.stop() == 0, mgr2.log_tail()
