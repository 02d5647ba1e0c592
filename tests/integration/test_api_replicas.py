"""Two `nexus manager` replicas on one PostgreSQL database: correct across replicas.

Real processes (booted together on a fresh database), a real PostgreSQL server, a real control
plane and a real astromesh node. Each replica serves the API on its own port; leader election
decides which one runs the controllers. What is checked, replica against replica:

* a user registered through one logs in through the other; a key made on one works on the other;
* a revoked key, a deleted tenant and a removed owner link stop working on the other within 1 s;
* a refresh token is rotated at most once however many replicas see it at once, and its reuse
  revokes the family wherever it is presented;
* one email registered on both at once: one 201, one 409;
* the login limit per account is one budget across replicas;
* the standby is ready, serves, and shows live status from its own informer cache.

The destructive cases (a replica SIGKILLed under load, the leader killed) are in
test_api_replicas_failover.py, on pairs of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment

from ..support.node import AstromeshNode
from ..support.postgres import PostgresServer
from ..support.replicas import PASSWORD, Pair, call, register, session, start_pair, tenant_with_key
from ..support.stores import StoreBackend

pytestmark = pytest.mark.cluster

WITHIN = 1.0


@pytest.fixture(scope="module")
async def pair(
    envtest: Environment,
    kube: Client,
    api_node: AstromeshNode,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Pair]:
    database = postgres_server.create_database("ha")
    p = await start_pair(
        envtest, kube, database, tmp_path_factory.mktemp("replicas"), node_url=api_node.url
    )
    yield p
    codes = await p.stop()
    assert codes == [0, 0], (p.a.log_tail(), p.b.log_tail())
    postgres_server.drop_database(database)


async def refused_within(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    """Poll ``url`` from the moment of the call; seconds until it answers 401/403."""
    started = time.monotonic()
    while True:
        status, _ = await call(s, "GET", url, **headers)
        if status in (401, 403):
            return time.monotonic() - started
        assert status == 200, status
        assert time.monotonic() - started < WITHIN, f"still {status} after {WITHIN}s"
        await asyncio.sleep(0.01)


async def test_both_replicas_booted_on_one_schema(pair: Pair) -> None:
    rows = StoreBackend("postgres", pair.database).rows("SELECT version FROM schema_version")
    assert rows == [(1,)]
    for m in pair.replicas:
        assert m.log_lines("store.feed_listening"), m.log_tail()


async def test_register_on_one_login_on_the_other(pair: Pair) -> None:
    async with session() as s:
        user = await register(s, pair.a.url, "cross@example.com")
        status, body = await call(
            s, "POST", f"{pair.b.url}/auth/login",
            {"email": "CROSS@example.com", "password": PASSWORD},
        )  # fmt: skip
        assert status == 200, body
        assert body["user"]["id"] == user["user"]["id"]
        # And the access token minted by one replica is good on the other.
        status, me = await call(
            s, "GET", f"{pair.a.url}/api/v1/me", Authorization=f"Bearer {body['accessToken']}"
        )
        assert status == 200 and me["id"] == user["user"]["id"]


async def test_a_key_revoked_on_one_is_refused_by_the_other_within_a_second(pair: Pair) -> None:
    async with session() as s:
        user = await register(s, pair.a.url, "revoke@example.com")
        access = user["accessToken"]
        tenant_id, raw, key_hash = await tenant_with_key(s, pair.a.url, access)
        me = f"{pair.b.url}/api/v1/me"
        for _ in range(5):  # B resolves the key and caches it
            status, body = await call(s, "GET", me, **{"X-API-Key": raw})
            assert status == 200 and body["tenant"]["id"] == tenant_id, body
        status, _ = await call(
            s, "DELETE", f"{pair.a.url}/api/v1/tenants/{tenant_id}/keys/{key_hash}",
            Authorization=f"Bearer {access}",
        )  # fmt: skip
        assert status == 200
        took = await refused_within(s, me, {"X-API-Key": raw})
        print(f"revoked on A, refused by B after {took * 1000:.0f} ms")
        status, _ = await call(s, "GET", f"{pair.a.url}/api/v1/me", **{"X-API-Key": raw})
        assert status == 401


async def test_a_tenant_deleted_on_one_stops_its_key_on_the_other_within_a_second(
    pair: Pair,
) -> None:
    async with session() as s:
        user = await register(s, pair.a.url, "deleted@example.com")
        access = user["accessToken"]
        tenant_id, raw, _ = await tenant_with_key(s, pair.a.url, access)
        me = f"{pair.b.url}/api/v1/me"
        for _ in range(5):
            status, _ = await call(s, "GET", me, **{"X-API-Key": raw})
            assert status == 200
        status, body = await call(
            s, "DELETE", f"{pair.a.url}/api/v1/tenants/{tenant_id}",
            Authorization=f"Bearer {access}",
        )  # fmt: skip
        assert status == 200, body
        took = await refused_within(s, me, {"X-API-Key": raw})
        print(f"tenant deleted on A, its key refused by B after {took * 1000:.0f} ms")
        status, _ = await call(
            s, "GET", f"{pair.b.url}/api/v1/tenants/{tenant_id}", Authorization=f"Bearer {access}"
        )
        assert status == 403


async def test_a_removed_owner_link_stops_working_on_every_replica_within_a_second(
    pair: Pair,
) -> None:
    async with session() as s:
        user = await register(s, pair.a.url, "owner-link@example.com")
        auth = {"Authorization": f"Bearer {user['accessToken']}"}
        tenant_id, _, _ = await tenant_with_key(s, pair.a.url, user["accessToken"])
        urls = [f"{m.url}/api/v1/tenants/{tenant_id}" for m in pair.replicas]
        for url in urls * 3:
            status, _ = await call(s, "GET", url, **auth)
            assert status == 200
        # No API removes an owner yet: an operator does it in the database.
        await asyncio.to_thread(
            StoreBackend("postgres", pair.database).execute,
            "DELETE FROM tenant_users WHERE tenant_id = ? AND user_id = ?",
            (tenant_id, user["user"]["id"]),
        )
        for url in urls:
            await refused_within(s, url, auth)


async def test_a_refresh_token_rotates_at_most_once_across_replicas(pair: Pair) -> None:
    async with session() as s:
        user = await register(s, pair.a.url, "refresh@example.com")
        # Two rounds of four: under the per-account refresh limit (10 a minute, all replicas).
        for _ in range(2):
            token = user["refreshToken"]
            results = await asyncio.gather(
                *(
                    call(s, "POST", f"{m.url}/auth/refresh", {"refreshToken": token})
                    for m in (pair.a, pair.b, pair.a, pair.b)
                )
            )
            ok = [body for status, body in results if status == 200]
            assert len(ok) <= 1, results
            assert all(status in (200, 401) for status, _ in results), results
            # Whatever won, the token came back more than once: the family is revoked.
            for body in ok:
                status, _ = await call(
                    s, "POST", f"{pair.b.url}/auth/refresh", {"refreshToken": body["refreshToken"]}
                )
                assert status == 401
            status, user = await call(
                s, "POST", f"{pair.b.url}/auth/login",
                {"email": "refresh@example.com", "password": PASSWORD},
            )  # fmt: skip
            assert status == 200


async def test_a_refresh_token_used_on_one_is_refused_on_the_other_and_revokes_the_family(
    pair: Pair,
) -> None:
    async with session() as s:
        user = await register(s, pair.a.url, "reuse@example.com")
        first = user["refreshToken"]
        status, rotated = await call(
            s, "POST", f"{pair.a.url}/auth/refresh", {"refreshToken": first}
        )
        assert status == 200
        status, body = await call(s, "POST", f"{pair.b.url}/auth/refresh", {"refreshToken": first})
        assert status == 401 and "reuse" in body["error"], body
        # The replay revoked the whole family: the token A handed out is dead on A too.
        status, _ = await call(
            s, "POST", f"{pair.a.url}/auth/refresh", {"refreshToken": rotated["refreshToken"]}
        )
        assert status == 401


async def test_one_email_registered_on_both_at_once_gives_one_201_and_one_409(
    pair: Pair,
) -> None:
    for i in range(5):
        email = f"race-{i}@example.com"
        body = {"email": email, "password": PASSWORD, "displayName": "Race"}
        async with session() as sa, session() as sb:
            results = await asyncio.gather(
                call(sa, "POST", f"{pair.a.url}/auth/register", body),
                call(sb, "POST", f"{pair.b.url}/auth/register", {**body, "email": email.upper()}),
            )
        assert sorted(status for status, _ in results) == [201, 409], results


async def test_the_login_limit_per_account_holds_across_replicas(pair: Pair) -> None:
    async with session() as s:
        await register(s, pair.a.url, "limited@example.com")
    statuses: list[int] = []
    for i in range(14):
        replica = pair.replicas[i % 2]
        # A fresh address for every attempt: only the per-account limit (10 a minute) applies.
        async with session() as s:
            status, _ = await call(
                s, "POST", f"{replica.url}/auth/login",
                {"email": "limited@example.com", "password": "wrong-password"},
            )  # fmt: skip
        statuses.append(status)
    # Per replica, each would have allowed 10; together they allow 10.
    assert statuses == [401] * 10 + [429] * 4, statuses


async def test_the_standby_serves_and_reads_live_status_from_its_own_cache(pair: Pair) -> None:
    leader, standby = await pair.leader()
    async with aiohttp.ClientSession() as plain:
        for m in pair.replicas:
            async with plain.get(f"http://127.0.0.1:{m.probe_port}/readyz") as r:
                assert r.status == 200, await r.text()
            async with plain.get(f"{m.url}/readyz") as r:
                assert r.status == 200, await r.text()
    assert standby.log_lines("manager.caches_synced")
    async with session() as s:
        user = await register(s, standby.url, "standby@example.com")
        auth = {"Authorization": f"Bearer {user['accessToken']}"}
        tenant_id, _, _ = await tenant_with_key(s, standby.url, user["accessToken"])

        async def phase_on(url: str) -> Any:
            status, body = await call(s, "GET", f"{url}/api/v1/tenants/{tenant_id}", **auth)
            assert status == 200, body
            return body["phase"] == "Ready"

        # Only the leader reconciles; the standby sees the result through its informers.
        deadline = time.monotonic() + 60
        while not await phase_on(standby.url):
            assert time.monotonic() < deadline, "the standby never showed the tenant Ready"
            await asyncio.sleep(0.3)
    assert await pair.leads(leader) and not await pair.leads(standby)
    assert standby.log_lines("controller.started") == [], "the standby ran a controller"
    assert (await standby.metrics()).value("controller_runtime_reconcile_total") == 0
    assert leader.log_lines("controller.started")
