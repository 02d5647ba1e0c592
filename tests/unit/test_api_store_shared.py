"""What replicas sharing one PostgreSQL database rely on, with two stores on a real server.

* the credential feed: a change committed through one store (or behind the API's back) leaves
  the other store's credential cache within 1 s; a listener that is killed or goes silent
  closes the cache until it is back (and then the cache starts empty);
* the shared rate limiter: one budget across stores, exact under concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from nexus.api.auth import new_api_key
from nexus.api.credcache import CredentialCache
from nexus.api.store import ApiKey, PostgresStore, Tenant, User

from ..support.stores import StoreBackend
from ..support.tcpproxy import TcpProxy

WITHIN = 1.0  # what the API promises for a revocation to reach every replica


@dataclass
class Replica:
    store: PostgresStore
    cache: CredentialCache


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[PostgresStore, Replica]]:
    """A writer store, and a second store whose cache listens (a second replica)."""
    writer = await PostgresStore.open(pg_url)
    other = await PostgresStore.open(pg_url)
    cache = CredentialCache()
    await other.watch_credentials(cache)
    try:
        yield writer, Replica(other, cache)
    finally:
        await other.close()
        await writer.close()


async def resolved(replica: Replica, key_hash: str) -> tuple[ApiKey, Tenant]:
    """Resolve a key as the API does, filling the cache."""
    since = replica.cache.generation
    key = await replica.store.lookup_api_key(key_hash)
    assert key is not None
    tenant = await replica.store.get_tenant(key.tenant_id)
    assert tenant is not None
    replica.cache.put_key(key, tenant, since)
    return key, tenant


async def gone_within(probe: Callable[[], bool], change: Callable[[], Awaitable[object]]) -> float:
    """Seconds from the start of ``change`` until ``probe`` is false; fails after 1 s."""
    assert probe(), "the entry must be cached before the change"
    started = time.monotonic()
    await change()
    while probe():
        if time.monotonic() - started > WITHIN:
            raise AssertionError(f"still cached {WITHIN}s after the change")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def setup_key(writer: PostgresStore, email: str = "o@example.com") -> tuple[User, str, str]:
    user = await writer.create_user(email, "O", "h")
    tenant = await writer.create_tenant(user.id, "T", "full")
    _, key_hash = new_api_key()
    await writer.create_api_key(tenant.id, key_hash, "k")
    return user, tenant.id, key_hash


async def test_changes_through_another_store_leave_the_cache_within_a_second(
    stores: tuple[PostgresStore, Replica],
) -> None:
    writer, replica = stores
    user, tenant_id, key_hash = await setup_key(writer)
    await resolved(replica, key_hash)
    took = await gone_within(
        lambda: replica.cache.key(key_hash) is not None,
        lambda: writer.revoke_api_key(tenant_id, key_hash),
    )
    print(f"revoked key left the other cache after {took * 1000:.1f} ms")

    _, tenant2, key2 = await setup_key(writer, "p@example.com")
    await resolved(replica, key2)
    await gone_within(
        lambda: replica.cache.key(key2) is not None, lambda: writer.delete_tenant(tenant2)
    )

    _, tenant3, key3 = await setup_key(writer, "q@example.com")
    await resolved(replica, key3)
    await gone_within(
        lambda: replica.cache.key(key3) is not None, lambda: writer.purge_tenant(tenant3)
    )

    replica.cache.put_user(user)
    backend = StoreBackend("postgres", writer._url)
    await gone_within(
        lambda: replica.cache.user(user.id) is not None,
        lambda: asyncio.to_thread(
            backend.execute, "UPDATE users SET password_hash = 'x' WHERE id = ?", (user.id,)
        ),
    )


async def test_changes_behind_the_apis_back_leave_the_cache_too(
    stores: tuple[PostgresStore, Replica],
) -> None:
    writer, replica = stores
    backend = StoreBackend("postgres", writer._url)
    _, _, key_hash = await setup_key(writer)
    await resolved(replica, key_hash)
    await gone_within(
        lambda: replica.cache.key(key_hash) is not None,
        lambda: asyncio.to_thread(
            backend.execute, "UPDATE api_keys SET revoked_at = now() WHERE hash = ?", (key_hash,)
        ),
    )
    _, _, key2 = await setup_key(writer, "p@example.com")
    await resolved(replica, key2)
    await gone_within(
        lambda: replica.cache.key(key2) is not None,
        lambda: asyncio.to_thread(backend.execute, "TRUNCATE api_keys"),
    )


async def test_bookkeeping_does_not_invalidate(stores: tuple[PostgresStore, Replica]) -> None:
    writer, replica = stores
    _, _, key_hash = await setup_key(writer)
    await resolved(replica, key_hash)
    generation = replica.cache.generation
    # last_used_at is written (the first use), which must not empty every replica's cache.
    assert await writer.lookup_api_key(key_hash) is not None
    await asyncio.sleep(0.5)
    assert replica.cache.generation == generation
    assert replica.cache.key(key_hash) is not None


async def test_a_killed_listener_closes_the_cache_until_it_is_back(
    stores: tuple[PostgresStore, Replica],
) -> None:
    writer, replica = stores
    feed = replica.store.feed
    assert feed is not None and feed.current() and feed.backend_pid is not None
    _, tenant_id, key_hash = await setup_key(writer)
    await resolved(replica, key_hash)
    # Killing the listener loses whatever is notified until it reconnects ...
    backend = StoreBackend("postgres", writer._url)
    backend.execute("SELECT pg_terminate_backend(?)", (feed.backend_pid,))
    await writer.revoke_api_key(tenant_id, key_hash)
    revoked = time.monotonic()  # the revoke has committed by now
    # ... so the cache is not trusted once the feed's last heartbeat is older than max_lag
    # (until then the feed cannot know yet that its listener is gone: the promise is "never
    # served after commit + max_lag"), and it starts empty after the reconnection.
    deadline = time.monotonic() + 10
    while feed.connections < 2 or not feed.current():
        if time.monotonic() > revoked + feed.max_lag:
            assert replica.cache.key(key_hash) is None
        assert time.monotonic() < deadline, "the feed did not reconnect"
        await asyncio.sleep(0.01)
    assert replica.cache.key(key_hash) is None
    assert len(replica.cache) == 0


async def test_a_silent_listener_closes_the_cache_within_max_lag(pg_url: str) -> None:
    # The listener's connection stays open but nothing comes through (a broken network path):
    # no error tells the feed, only its heartbeats stop coming back.
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    writer = await PostgresStore.open(pg_url)
    replica = await PostgresStore.open(pg_url.replace(host_port, f"127.0.0.1:{proxy.port}"))
    cache = CredentialCache()
    try:
        await replica.watch_credentials(cache)
        feed = replica.feed
        assert feed is not None and feed.current()
        _, tenant_id, key_hash = await setup_key(writer)
        await resolved(Replica(replica, cache), key_hash)
        proxy.blackhole()
        silenced = time.monotonic()
        await writer.revoke_api_key(tenant_id, key_hash)
        while cache.key(key_hash) is not None:
            assert time.monotonic() - silenced < WITHIN, "a silent feed kept the cache open"
            await asyncio.sleep(0.01)
        print(f"cache closed {time.monotonic() - silenced:.2f}s after the feed went silent")
        # The feed gives up on the silent connection and listens again on a new one.
        deadline = time.monotonic() + 15
        while feed.connections < 2 or not feed.current():
            assert time.monotonic() < deadline, "the feed did not replace a silent connection"
            await asyncio.sleep(0.05)
        assert cache.key(key_hash) is None
    finally:
        await replica.close()
        await writer.close()
        await proxy.stop()


# -- the shared rate limiter ------------------------------------------------------------------


async def test_the_rate_limit_is_one_budget_across_stores(
    stores: tuple[PostgresStore, Replica],
) -> None:
    a, replica = stores
    window = 1.5
    la, lb = a.rate_limiter(3, window), replica.store.rate_limiter(3, window)
    assert [await la.hit("login:x"), await lb.hit("login:x"), await la.hit("login:x")] == [
        None,
        None,
        None,
    ]
    wait = await lb.hit("login:x")
    assert wait is not None and 0 < wait <= window
    # Refused hits are not recorded; other keys are independent.
    for _ in range(5):
        assert await la.hit("login:x") is not None
    assert await lb.hit("login:y") is None
    await asyncio.sleep(window + 0.1)
    assert await lb.hit("login:x") is None


async def test_concurrent_hits_on_two_stores_allow_exactly_the_limit(
    stores: tuple[PostgresStore, Replica],
) -> None:
    a, replica = stores
    limiters = [a.rate_limiter(5, 60), replica.store.rate_limiter(5, 60)]
    results = await asyncio.gather(*(limiters[i % 2].hit("register:z") for i in range(24)))
    assert sum(r is None for r in results) == 5
    # Keys are client input: odd text is a key like any other.
    assert await limiters[0].hit("login:\x00\ud800'; --") is None
