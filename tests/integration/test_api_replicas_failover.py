"""Two `nexus manager` replicas on one PostgreSQL database, one of them SIGKILLed under load.

* The standby is killed while both take writes: nothing either acknowledged is lost (every key
  that got a 201 authenticates, every user that got a 201 logs in) and the survivor never
  fails a request.
* The leader is killed while both take writes: the controllers move to the survivor within
  the lease duration, the survivor's API never fails a request meanwhile, and tenants created
  through it (before, during and after the failover) become Ready.

Each case boots a pair of its own on a fresh database.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment

from ..support.faults import NexusManager, purge
from ..support.node import AstromeshNode
from ..support.postgres import PostgresServer
from ..support.replicas import (
    LEASE,
    PASSWORD,
    Pair,
    call,
    register,
    session,
    start_pair,
    tenant_with_key,
)

pytestmark = pytest.mark.cluster

LOAD_BEFORE_KILL = 1.5
LOAD_AFTER_KILL = 2.0
WORKERS = 3  # per replica and kind of write


@pytest.fixture
async def fresh_pair(
    envtest: Environment,
    kube: Client,
    api_node: AstromeshNode,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> AsyncIterator[Pair]:
    database = postgres_server.create_database("failover")
    p = await start_pair(envtest, kube, database, tmp_path, node_url=api_node.url)
    try:
        yield p
    finally:
        await p.stop()
        await purge(kube, p.namespace)
        postgres_server.drop_database(database)


@dataclass
class Load:
    """Writes against both replicas; what was acknowledged, and what failed where."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    keys: list[tuple[str, str]] = field(default_factory=list)  # (replica url, raw key)
    users: list[str] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)  # url -> what went wrong
    ok: dict[str, int] = field(default_factory=dict)

    def failed(self, url: str, what: str) -> None:
        self.failures.setdefault(url, []).append(what)

    def acked(self, url: str) -> None:
        self.ok[url] = self.ok.get(url, 0) + 1

    async def keys_on(self, url: str, tenant_id: str, access: str) -> None:
        async with session() as s:
            while not self.stop.is_set():
                try:
                    status, body = await call(
                        s, "POST", f"{url}/api/v1/tenants/{tenant_id}/keys", {"label": "load"},
                        Authorization=f"Bearer {access}",
                    )  # fmt: skip
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.failed(url, type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
                if status == 201:
                    self.keys.append((url, body["rawKey"]))
                    self.acked(url)
                else:
                    self.failed(url, f"{status} {body}")

    async def users_on(self, url: str, prefix: str) -> None:
        i = 0
        while not self.stop.is_set():
            email = f"{prefix}-{i}@example.com"
            i += 1
            # A session (and so a client address) per registration: the per-address limit
            # (30 a minute, shared by the replicas) is not what is under test.
            async with session() as s:
                try:
                    status, body = await call(
                        s, "POST", f"{url}/auth/register",
                        {"email": email, "password": PASSWORD, "displayName": "Load"},
                    )  # fmt: skip
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.failed(url, type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
            if status == 201:
                self.users.append(email)
                self.acked(url)
            else:
                self.failed(url, f"{status} {body}")

    def start(self, pair: Pair, tenant_id: str, access: str) -> list[asyncio.Task[None]]:
        tasks = []
        for m, tag in ((pair.a, "a"), (pair.b, "b")):
            for w in range(WORKERS):
                tasks.append(asyncio.create_task(self.keys_on(m.url, tenant_id, access)))
                tasks.append(asyncio.create_task(self.users_on(m.url, f"load-{tag}{w}")))
        return tasks


async def finish(load: Load, tasks: list[asyncio.Task[None]]) -> None:
    load.stop.set()
    await asyncio.gather(*tasks)


async def everything_acknowledged_is_there(load: Load, survivor: NexusManager) -> None:
    async with session() as s:
        for _, raw in load.keys:
            status, body = await call(s, "GET", f"{survivor.url}/api/v1/me", **{"X-API-Key": raw})
            assert status == 200, (raw, body)
    for email in load.users:
        async with session() as s:
            status, body = await call(
                s, "POST", f"{survivor.url}/auth/login", {"email": email, "password": PASSWORD}
            )
            assert status == 200, (email, body)


async def test_sigkill_of_one_replica_under_load_loses_no_acknowledged_write(
    fresh_pair: Pair,
) -> None:
    pair = fresh_pair
    leader, standby = await pair.leader()
    async with session() as s:
        user = await register(s, leader.url, "owner@example.com")
        tenant_id, _, _ = await tenant_with_key(s, leader.url, user["accessToken"])
    load = Load()
    tasks = load.start(pair, tenant_id, user["accessToken"])
    try:
        await asyncio.sleep(LOAD_BEFORE_KILL)
        acked_by_victim = load.ok.get(standby.url, 0)
        assert await standby.stop(signal.SIGKILL) == -signal.SIGKILL
        await asyncio.sleep(LOAD_AFTER_KILL)
    finally:
        await finish(load, tasks)
    print(
        f"acknowledged: {load.ok}; failures on the killed replica: "
        f"{len(load.failures.get(standby.url, []))}"
    )
    assert acked_by_victim > 5, load.ok
    assert load.ok.get(leader.url, 0) > 20, load.ok
    assert load.failures.get(leader.url, []) == [], "the survivor failed requests"
    await everything_acknowledged_is_there(load, leader)
    assert await pair.leads(leader)


async def test_killing_the_leader_moves_the_controllers_while_the_api_keeps_serving(
    fresh_pair: Pair,
) -> None:
    pair = fresh_pair
    leader, survivor = await pair.leader()
    async with session() as s:
        user = await register(s, survivor.url, "owner@example.com")
        access = user["accessToken"]
        before, _, _ = await tenant_with_key(s, survivor.url, access)
    load = Load()
    tasks = load.start(pair, before, access)
    created_during: list[str] = []
    try:
        await asyncio.sleep(LOAD_BEFORE_KILL)
        killed_at = time.monotonic()
        assert await leader.stop(signal.SIGKILL) == -signal.SIGKILL
        async with session() as s:
            # A tenant created while nobody leads: stored, its resource created, reconciled
            # once the survivor takes over.
            tenant, _, _ = await tenant_with_key(s, survivor.url, access)
            created_during.append(tenant)
        while not await pair.leads(survivor):
            assert time.monotonic() - killed_at < LEASE + 5, "the survivor never took over"
            await asyncio.sleep(0.05)
        took = time.monotonic() - killed_at
        await asyncio.sleep(LOAD_AFTER_KILL)
    finally:
        await finish(load, tasks)
    print(f"controllers moved {took:.2f}s after the leader was killed (lease {LEASE}s)")
    assert took < LEASE + 2.5, f"took {took:.2f}s"
    assert load.failures.get(survivor.url, []) == [], "the survivor failed requests"
    assert load.ok.get(survivor.url, 0) > 20, load.ok
    await everything_acknowledged_is_there(load, survivor)
    async with session() as s:
        after, _, _ = await tenant_with_key(s, survivor.url, access)
        auth = {"Authorization": f"Bearer {access}"}

        async def ready(tenant_id: str) -> bool:
            status, body = await call(
                s, "GET", f"{survivor.url}/api/v1/tenants/{tenant_id}", **auth
            )
            assert status == 200, body
            return bool(body["phase"] == "Ready")

        deadline = time.monotonic() + 90
        pending = [before, *created_during, after]
        while pending:
            pending = [t for t in pending if not await ready(t)]
            assert time.monotonic() < deadline, f"never Ready under the new leader: {pending}"
            await asyncio.sleep(0.3)
    assert survivor.log_lines("controller.started")
