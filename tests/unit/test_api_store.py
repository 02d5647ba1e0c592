"""The store suite, run on both backends: real SQLite files in WAL mode (never ``:memory:``)
and real PostgreSQL databases (a server the tests start, see tests/support/postgres.py).

Tests that take ``backend`` run once per backend; the few about one backend's own machinery
(SQLite's PRAGMAs and statement splitting, PostgreSQL's advisory lock) say so in their name.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
import pytest

from nexus.api.auth import hash_secret, new_api_key, new_family_id, new_refresh_token
from nexus.api.credcache import CredentialCache
from nexus.api.store import (
    LAST_USED_RESOLUTION,
    EmailTaken,
    MigrationError,
    NotFound,
    PostgresStore,
    SqliteStore,
    Store,
    StoreError,
    format_ts,
    open_store,
    parse_ts,
)
from nexus.api.store.migrations.postgres import MIGRATION_LOCK
from nexus.api.store.migrations.postgres import MIGRATIONS as PG_MIGRATIONS
from nexus.api.store.migrations.postgres import migrate as pg_migrate
from nexus.api.store.migrations.sqlite import MIGRATIONS, migrate, split_statements
from nexus.runtime.envtest import free_port

from ..support.postgres import PostgresServer
from ..support.protocols import implementation_problems, protocol_members
from ..support.stores import StoreBackend

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
EVIL = "'; DROP TABLE users; --"


class FakeNow:
    """A settable UTC clock for the store."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeNow:
    return FakeNow()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nexus.db"


@pytest.fixture
async def store(backend: StoreBackend, clock: FakeNow) -> AsyncIterator[Store]:
    s = await backend.open(clock)
    yield s
    await s.close()


def raw_rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the file with a separate, plain sqlite3 connection (what another process sees)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def user_and_tenant(store: Store, email: str = "owner@example.com") -> tuple[str, str]:
    user = await store.create_user(email, "Owner", "hash")
    tenant = await store.create_tenant(user.id, "Acme", "small")
    return user.id, tenant.id


# -- opening, migrations (both backends) --------------------------------------------------


def expected_versions(backend: StoreBackend) -> list[int]:
    return [v for v, _ in (PG_MIGRATIONS if backend.is_postgres else MIGRATIONS)]


def table_names(backend: StoreBackend) -> set[str]:
    if backend.is_postgres:
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type='table'"
    return {str(r[0]) for r in backend.rows(sql)}


@pytest.mark.parametrize("impl", [SqliteStore, PostgresStore])
def test_each_backend_implements_every_method_of_the_protocol(impl: type) -> None:
    # The handlers see only ``Store``; mypy does not check tests, so compare signatures here.
    assert protocol_members(Store)  # the protocol really declares methods to compare
    assert implementation_problems(impl, Store) == []


async def test_both_backends_satisfy_the_protocol(store: Store, backend: StoreBackend) -> None:
    repo: Store = store  # mypy checks the structural match; this asserts it at runtime too
    assert isinstance(repo, PostgresStore if backend.is_postgres else SqliteStore)
    assert callable(repo.rotate_refresh_token)


async def test_open_store_picks_the_backend_from_the_database_flag(backend: StoreBackend) -> None:
    s = await open_store(backend.location)
    try:
        assert isinstance(s, PostgresStore if backend.is_postgres else SqliteStore)
        await s.ping()
    finally:
        await s.close()


async def test_migrations_from_empty_then_reopen_is_idempotent(backend: StoreBackend) -> None:
    first = await backend.open()
    user = await first.create_user("keep@example.com", "Keep", "hash")
    await first.close()
    versions = backend.rows("SELECT version, applied_at FROM schema_version ORDER BY version")
    assert [v for v, _ in versions] == expected_versions(backend)

    second = await backend.open()
    try:
        assert backend.rows("SELECT version, applied_at FROM schema_version") == versions
        assert await second.get_user(user.id) == user
    finally:
        await second.close()
    tables = table_names(backend)
    assert tables >= {"schema_version", "users", "tenants", "tenant_users", "api_keys"}
    assert "refresh_tokens" in tables


async def test_concurrent_opens_migrate_once(backend: StoreBackend) -> None:
    # Replicas booting together on a fresh database: the migrations race (on PostgreSQL, the
    # advisory lock decides; on SQLite, BEGIN IMMEDIATE and the WAL conversion).
    stores = await asyncio.gather(*(backend.open() for _ in range(8)))
    try:
        assert backend.rows("SELECT COUNT(*) FROM schema_version") == [
            (len(expected_versions(backend)),)
        ]
        user = await stores[0].create_user("boot@example.com", "Boot", "h")
        assert await stores[-1].get_user(user.id) == user
    finally:
        for s in stores:
            await s.close()


async def test_a_newer_schema_is_refused(backend: StoreBackend) -> None:
    await (await backend.open()).close()
    future = expected_versions(backend)[-1] + 1
    backend.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
        (future, "2030-01-01T00:00:00.000000Z"),
    )
    # This build does not know that version: refusing beats silently running on it.
    with pytest.raises(MigrationError, match="newer"):
        await backend.open()


async def test_closed_store_raises_store_error(backend: StoreBackend) -> None:
    s = await backend.open()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError):
        await s.ping()
    with pytest.raises(StoreError):
        await s.get_user("usr_0000000000000000")
    with pytest.raises(StoreError):
        await s.create_user("a@example.com", "A", "h")


# -- SQLite's own machinery ---------------------------------------------------------------


async def test_sqlite_pragmas_are_durable(db_path: Path) -> None:
    store = await SqliteStore.open(db_path)
    try:
        assert await store.pragmas() == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "foreign_keys": 1,
            "busy_timeout": 5000,
        }
        # WAL is a property of the file: any other connection sees it too.
        assert raw_rows(db_path, "PRAGMA journal_mode") == [("wal",)]
        await store.ping()
    finally:
        await store.close()


async def raw_conn(path: Path) -> aiosqlite.Connection:
    return await aiosqlite.connect(path, isolation_level=None)


async def test_sqlite_new_migration_applies_only_the_new_step(db_path: Path) -> None:
    await (await SqliteStore.open(db_path)).close()
    extra = [*MIGRATIONS, (MIGRATIONS[-1][0] + 1, "CREATE TABLE extra (x TEXT);")]
    conn = await raw_conn(db_path)
    try:
        assert await migrate(conn, extra) == extra[-1][0]
        assert await migrate(conn, extra) == extra[-1][0]  # nothing left to do
    finally:
        await conn.close()
    assert [r[0] for r in raw_rows(db_path, "SELECT version FROM schema_version")] == [
        v for v, _ in extra
    ]
    with pytest.raises(MigrationError, match="newer"):
        await SqliteStore.open(db_path)


async def test_sqlite_a_failing_migration_leaves_nothing_behind(db_path: Path) -> None:
    broken = [(1, "CREATE TABLE a (x TEXT); CREATE TABLE a (y TEXT);")]
    conn = await raw_conn(db_path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            await migrate(conn, broken)
        assert not conn.in_transaction
        assert list(await conn.execute_fetchall("SELECT COUNT(*) FROM schema_version")) == [(0,)]
        names = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE name = 'a'")
        assert list(names) == []
        # The connection is usable (not stuck inside the failed transaction).
        assert await migrate(conn, [(1, "CREATE TABLE a (x TEXT);")]) == 1
    finally:
        await conn.close()


async def test_migration_versions_must_increase(db_path: Path) -> None:
    conn = await raw_conn(db_path)
    try:
        for bad in ([(2, "SELECT 1;"), (1, "SELECT 1;")], [(1, "SELECT 1;"), (1, "SELECT 2;")]):
            with pytest.raises(MigrationError, match="increasing"):
                await migrate(conn, bad)
    finally:
        await conn.close()


def test_sqlite_split_statements_respects_literals_and_triggers() -> None:
    sql = """
    CREATE TABLE t (x TEXT DEFAULT 'a;b'); -- comment; with a semicolon
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'c;d'; END;
    """
    statements = split_statements(sql)
    assert len(statements) == 2
    assert "'a;b'" in statements[0]
    # The comment travels with the next statement, which SQLite accepts.
    assert "CREATE TRIGGER" in statements[1] and statements[1].endswith("END;")
    assert "'c;d'" in statements[1]
    with pytest.raises(MigrationError):
        split_statements("CREATE TABLE t (x TEXT); CREATE TABLE u (x TEXT DEFAULT 'open")


async def test_sqlite_memory_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="file"):
        await SqliteStore.open(":memory:")


async def test_sqlite_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        await SqliteStore.open(tmp_path / "missing-dir" / "nexus.db")
    (tmp_path / "not-a-db").write_bytes(b"this is not an SQLite file, just some bytes" * 100)
    with pytest.raises(StoreError):
        await SqliteStore.open(tmp_path / "not-a-db")


# -- PostgreSQL's own machinery -----------------------------------------------------------


async def pg_conn(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def test_postgres_new_migration_applies_only_the_new_step(pg_url: str) -> None:
    await (await PostgresStore.open(pg_url)).close()
    extra = [*PG_MIGRATIONS, (PG_MIGRATIONS[-1][0] + 1, "CREATE TABLE extra (x text);")]
    async with await pg_conn(pg_url) as conn:
        assert await pg_migrate(conn, extra) == extra[-1][0]
        assert await pg_migrate(conn, extra) == extra[-1][0]  # nothing left to do
        cur = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in await cur.fetchall()] == [v for v, _ in extra]
    with pytest.raises(MigrationError, match="newer"):
        await PostgresStore.open(pg_url)


async def test_postgres_a_failing_migration_leaves_nothing_behind(pg_url: str) -> None:
    broken = [(1, "CREATE TABLE a (x text); CREATE TABLE a (y text);")]
    async with await pg_conn(pg_url) as conn:
        with pytest.raises(psycopg.errors.DuplicateTable):
            await pg_migrate(conn, broken)
        cur = await conn.execute("SELECT COUNT(*) FROM schema_version")
        assert await cur.fetchall() == [(0,)]
        cur = await conn.execute("SELECT to_regclass('a') IS NULL")
        assert await cur.fetchall() == [(True,)]
        # The lock was released and the connection is usable.
        cur = await conn.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert await cur.fetchall() == [(0,)]
        assert await pg_migrate(conn, [(1, "CREATE TABLE a (x text);")]) == 1


async def test_postgres_migrations_wait_for_the_advisory_lock(pg_url: str) -> None:
    # Another replica mid-migration holds the lock: this one waits, then finds the schema.
    async with await pg_conn(pg_url) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        opening = asyncio.create_task(PostgresStore.open(pg_url))
        await asyncio.sleep(1.0)
        assert not opening.done()
        assert table_names(StoreBackend("postgres", pg_url)) == set() or not opening.done()
        await holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        store = await asyncio.wait_for(opening, 30)
    try:
        await store.ping()
    finally:
        await store.close()


async def test_postgres_connection_failures_raise_store_error(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    closed_port = pg_url.replace(f":{postgres_server.port}/", f":{free_port()}/")
    with pytest.raises(StoreError, match="cannot connect"):
        await PostgresStore.open(closed_port, connect_timeout=1.0)
    started = time.monotonic()
    wrong_password = pg_url.replace(postgres_server.password, "wrong")
    with pytest.raises(StoreError, match="password authentication failed") as err:
        await PostgresStore.open(wrong_password, connect_timeout=20.0)
    assert "wrong" not in str(err.value)
    missing_db = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(StoreError, match="does not exist"):
        await PostgresStore.open(missing_db, connect_timeout=20.0)
    # Neither of those waits for the connect timeout: they will not fix themselves.
    assert time.monotonic() - started < 10


async def test_postgres_reads_survive_killed_connections(pg_url: str) -> None:
    store = await PostgresStore.open(pg_url)
    try:
        user = await store.create_user("k@example.com", "K", "h")
        # A database restart or a failover cuts every pooled connection.
        StoreBackend("postgres", pg_url).execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await asyncio.sleep(0.2)
        for _ in range(4):  # more reads than broken connections in the pool
            assert await store.get_user(user.id) == user
    finally:
        await store.close()


async def test_postgres_text_it_cannot_hold_is_refused_or_matches_nothing(pg_url: str) -> None:
    store = await PostgresStore.open(pg_url)
    try:
        user_id, tenant_id = await user_and_tenant(store)
        nul = "a\x00b"
        with pytest.raises(ValueError):
            await store.get_user_by_email(nul + "@example.com")
        assert await store.get_user(nul) is None
        assert await store.get_tenant(nul) is None
        assert await store.user_owns_tenant(user_id, nul) is False
        assert await store.revoke_api_key(tenant_id, nul) is False
        assert await store.lookup_api_key(nul) is None
        assert await store.list_api_keys(nul) == []
        assert await store.get_refresh_token(nul) is None
        await store.ping()
    finally:
        await store.close()


# -- users --------------------------------------------------------------------------------


async def test_create_and_get_user(store: Store, clock: FakeNow) -> None:
    user = await store.create_user("Alice@Example.com", "Alice", "$2b$04$hash")
    assert re.fullmatch(r"usr_[0-9a-f]{16}", user.id)
    assert user.email == "Alice@Example.com"  # as typed
    assert user.created_at == clock.now
    assert await store.get_user(user.id) == user
    assert await store.get_user_by_email("alice@example.com") == user
    assert await store.get_user_by_email("ALICE@EXAMPLE.COM") == user
    assert await store.get_user_by_email("bob@example.com") is None
    assert await store.get_user("usr_ffffffffffffffff") is None
    assert "$2b$04$hash" not in repr(user)


async def test_email_unique_case_insensitively(store: Store, backend: StoreBackend) -> None:
    await store.create_user("alice@example.com", "Alice", "h")
    for variant in ("alice@example.com", "ALICE@example.com", "Alice@Example.COM"):
        with pytest.raises(EmailTaken):
            await store.create_user(variant, "Mallory", "h2")
    assert backend.rows("SELECT COUNT(*) FROM users") == [(1,)]
    assert isinstance(EmailTaken("x"), StoreError)


async def test_concurrent_registrations_of_one_email_yield_one_user(store: Store) -> None:
    results = await asyncio.gather(
        *(store.create_user(e, "X", "h") for e in ("race@x.io", "RACE@x.io", "Race@X.io") * 3),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, EmailTaken) for r in results if isinstance(r, BaseException))


async def test_users_from_two_stores_on_one_database_stay_unique(backend: StoreBackend) -> None:
    a, b = await backend.open(), await backend.open()
    try:
        results = await asyncio.gather(
            *(s.create_user("both@x.io", "X", "h") for s in (a, b, a, b)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        user = await b.get_user_by_email("BOTH@x.io")
        assert user is not None and await a.get_user(user.id) == user
    finally:
        await a.close()
        await b.close()


async def test_sql_metacharacters_are_stored_verbatim(store: Store, backend: StoreBackend) -> None:
    email = EVIL + "@example.com"
    user = await store.create_user(email, EVIL, EVIL)
    assert await store.get_user_by_email(email) == user
    assert await store.get_user_by_email(EVIL) is None
    tenant = await store.create_tenant(user.id, EVIL, EVIL)
    assert (tenant.display_name, tenant.node_profile) == (EVIL, EVIL)
    _, key_hash = new_api_key()
    key = await store.create_api_key(tenant.id, key_hash, EVIL)
    assert key.label == EVIL
    assert await store.lookup_api_key(EVIL) is None
    assert await store.revoke_api_key(EVIL, key_hash) is False
    assert await store.revoke_api_key(tenant.id, EVIL) is False
    assert await store.user_owns_tenant(EVIL, tenant.id) is False
    assert await store.get_tenant(EVIL) is None
    assert await store.get_refresh_token(EVIL) is None
    assert await store.revoke_token_family(EVIL) == 0
    assert backend.rows("SELECT COUNT(*) FROM users") == [(1,)]
    assert backend.rows("SELECT display_name, password_hash FROM users") == [(EVIL, EVIL)]


async def test_odd_unicode_is_stored_or_refused_cleanly(store: Store) -> None:
    user = await store.create_user("odd@example.com", "a\tb \u00e9 \U0001f600 \u200b", "h")
    assert (await store.get_user(user.id)) == user
    # A lone surrogate (JSON "\ud800") has no UTF-8 form, and PostgreSQL text cannot hold NUL:
    # ValueError (a 400), not StoreError, and alike on both backends.
    for bad in ("\ud800", "a\x00b"):
        with pytest.raises(ValueError):
            await store.create_user(f"{bad}@example.com", "X", "h")
        with pytest.raises(ValueError):
            await store.create_user("fine@example.com", bad, "h")
        with pytest.raises(ValueError):
            await store.get_user_by_email(f"{bad}@example.com")
        with pytest.raises(ValueError):
            await store.create_tenant(user.id, bad, "small")
    tenant = await store.create_tenant(user.id, "T", "small")
    with pytest.raises(ValueError):
        await store.create_api_key(tenant.id, new_api_key()[1], "a\x00b")
    assert await store.get_user_by_email("fine@example.com") is None
    assert await store.list_api_keys(tenant.id) == []
    await store.ping()  # and the store is still healthy


# -- tenants ------------------------------------------------------------------------------


async def test_create_tenant_links_the_owner(store: Store, backend: StoreBackend) -> None:
    owner = await store.create_user("o@example.com", "O", "h")
    other = await store.create_user("p@example.com", "P", "h")
    tenant = await store.create_tenant(owner.id, "Acme Corp", "gpu-small")
    assert re.fullmatch(r"t_[0-9a-f]{12}", tenant.id)
    assert tenant.cr_name == "tenant-" + tenant.id[2:]
    assert DNS_1123_LABEL.fullmatch(tenant.cr_name)
    assert (tenant.display_name, tenant.node_profile, tenant.deleted_at) == (
        "Acme Corp",
        "gpu-small",
        None,
    )
    assert await store.get_tenant(tenant.id) == tenant
    assert await store.list_user_tenants(owner.id) == [tenant]
    assert await store.list_user_tenants(other.id) == []
    assert await store.user_owns_tenant(owner.id, tenant.id)
    assert not await store.user_owns_tenant(other.id, tenant.id)
    assert not await store.user_owns_tenant(owner.id, "t_000000000000")
    assert backend.rows("SELECT tenant_id, user_id, role FROM tenant_users") == [
        (tenant.id, owner.id, "owner")
    ]


async def test_create_tenant_for_unknown_user_writes_nothing(
    store: Store, backend: StoreBackend
) -> None:
    with pytest.raises(NotFound):
        await store.create_tenant("usr_0000000000000000", "Ghost", "small")
    assert backend.rows("SELECT COUNT(*) FROM tenants") == [(0,)]


async def test_list_user_tenants_in_creation_order(store: Store, clock: FakeNow) -> None:
    owner = await store.create_user("o@example.com", "O", "h")
    created = []
    for i in range(3):
        created.append(await store.create_tenant(owner.id, f"T{i}", "small"))
        clock.advance(seconds=1)
    assert await store.list_user_tenants(owner.id) == created


async def test_delete_tenant_hides_it_and_revokes_its_keys(
    store: Store, clock: FakeNow, backend: StoreBackend
) -> None:
    user_id, tenant_id = await user_and_tenant(store)
    _, other_tenant = await user_and_tenant(store, "other@example.com")
    hashes = [new_api_key()[1] for _ in range(3)]
    for h in hashes:
        await store.create_api_key(tenant_id, h, "k")
    _, other_hash = new_api_key()
    await store.create_api_key(other_tenant, other_hash, "other")

    assert await store.delete_tenant(tenant_id) is True
    assert await store.get_tenant(tenant_id) is None
    assert await store.list_user_tenants(user_id) == []
    assert not await store.user_owns_tenant(user_id, tenant_id)
    for h in hashes:
        assert await store.lookup_api_key(h) is None
    assert await store.list_api_keys(tenant_id) == []
    revoked = backend.rows("SELECT revoked_at FROM api_keys WHERE tenant_id = ?", (tenant_id,))
    assert revoked == [(format_ts(clock.now),)] * 3
    # Other tenants are untouched; deleting twice is a no-op.
    assert await store.lookup_api_key(other_hash) is not None
    assert await store.delete_tenant(tenant_id) is False
    assert await store.delete_tenant("t_000000000000") is False
    with pytest.raises(NotFound):
        await store.create_api_key(tenant_id, new_api_key()[1], "late")


async def test_purge_tenant_removes_everything_it_owns(store: Store, backend: StoreBackend) -> None:
    user_id, tenant_id = await user_and_tenant(store)
    await store.create_api_key(tenant_id, new_api_key()[1], "k")
    assert await store.purge_tenant(tenant_id) is True
    for table in ("tenants", "tenant_users", "api_keys"):
        assert backend.rows(f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    assert await store.get_user(user_id) is not None
    assert await store.purge_tenant(tenant_id) is False


# -- API keys -----------------------------------------------------------------------------


async def test_api_key_lifecycle(store: Store, clock: FakeNow) -> None:
    _, tenant_id = await user_and_tenant(store)
    raw, key_hash = new_api_key()
    assert key_hash == hash_secret(raw)
    key = await store.create_api_key(tenant_id, key_hash, "ci")
    assert (key.hash, key.tenant_id, key.label, key.created_at) == (
        key_hash,
        tenant_id,
        "ci",
        clock.now,
    )
    assert (key.last_used_at, key.revoked_at) == (None, None)
    assert await store.list_api_keys(tenant_id) == [key]
    found = await store.lookup_api_key(key_hash)
    assert found is not None and found.tenant_id == tenant_id
    assert found.last_used_at == clock.now
    assert await store.lookup_api_key(hash_secret("nxk_unknown")) is None


async def test_last_used_is_written_at_most_once_a_minute(
    store: Store, clock: FakeNow, backend: StoreBackend
) -> None:
    _, tenant_id = await user_and_tenant(store)
    _, key_hash = new_api_key()
    await store.create_api_key(tenant_id, key_hash, "k")
    first_use = clock.now

    def stored_last_used() -> datetime:
        rows = backend.rows("SELECT last_used_at FROM api_keys WHERE hash = ?", (key_hash,))
        return parse_ts(str(rows[0][0]))

    await store.lookup_api_key(key_hash)
    assert stored_last_used() == first_use
    clock.advance(seconds=30)
    await asyncio.gather(*(store.lookup_api_key(key_hash) for _ in range(10)))
    assert stored_last_used() == first_use
    clock.advance(seconds=LAST_USED_RESOLUTION.total_seconds())
    results = await asyncio.gather(*(store.lookup_api_key(key_hash) for _ in range(10)))
    assert stored_last_used() == clock.now
    assert {k.last_used_at for k in results if k is not None} == {clock.now}
    listed = await store.list_api_keys(tenant_id)
    assert [k.last_used_at for k in listed] == [clock.now]


async def test_revoking_another_tenants_key_revokes_nothing(store: Store) -> None:
    _, tenant_a = await user_and_tenant(store, "a@example.com")
    _, tenant_b = await user_and_tenant(store, "b@example.com")
    _, hash_a = new_api_key()
    await store.create_api_key(tenant_a, hash_a, "a-key")

    assert await store.revoke_api_key(tenant_b, hash_a) is False
    assert await store.lookup_api_key(hash_a) is not None
    assert [k.hash for k in await store.list_api_keys(tenant_a)] == [hash_a]

    assert await store.revoke_api_key(tenant_a, hash_a) is True
    assert await store.lookup_api_key(hash_a) is None
    assert await store.list_api_keys(tenant_a) == []
    assert await store.revoke_api_key(tenant_a, hash_a) is False  # already revoked


async def test_malformed_key_hashes_are_refused(store: Store) -> None:
    _, tenant_id = await user_and_tenant(store)
    for bad in ("nxk_rawkeyshouldneverbestored", "A" * 64, "0" * 63):
        with pytest.raises(StoreError):
            await store.create_api_key(tenant_id, bad, "k")
    _, key_hash = new_api_key()
    await store.create_api_key(tenant_id, key_hash, "k")
    with pytest.raises(StoreError):
        await store.create_api_key(tenant_id, key_hash, "duplicate")
    with pytest.raises(NotFound):
        await store.create_api_key("t_000000000000", new_api_key()[1], "k")


# -- refresh tokens -----------------------------------------------------------------------


async def test_store_and_rotate_refresh_token(store: Store, clock: FakeNow) -> None:
    user = await store.create_user("r@example.com", "R", "h")
    family = new_family_id()
    _, rt1 = new_refresh_token()
    expires = clock.now + timedelta(days=30)
    stored = await store.store_refresh_token(rt1, user.id, family, expires)
    assert await store.get_refresh_token(rt1) == stored
    assert stored.usable(clock.now)

    clock.advance(minutes=5)
    _, rt2 = new_refresh_token()
    assert await store.rotate_refresh_token(rt1, rt2, clock.now + timedelta(days=30)) is True
    old = await store.get_refresh_token(rt1)
    new = await store.get_refresh_token(rt2)
    assert old is not None and new is not None
    assert (old.revoked_at, old.replaced_by) == (clock.now, rt2)
    assert not old.usable(clock.now)
    assert (new.user_id, new.family_id, new.revoked_at) == (user.id, family, None)
    assert new.expires_at == clock.now + timedelta(days=30)

    # Reuse of rt1: refused, and nothing changes (the caller then revokes the family).
    _, rt3 = new_refresh_token()
    assert await store.rotate_refresh_token(rt1, rt3, clock.now + timedelta(days=30)) is False
    assert await store.get_refresh_token(rt3) is None
    assert await store.rotate_refresh_token(hash_secret("rt_unknown"), rt3, expires) is False


async def test_expired_refresh_token_does_not_rotate(store: Store, clock: FakeNow) -> None:
    user = await store.create_user("r@example.com", "R", "h")
    _, rt1 = new_refresh_token()
    await store.store_refresh_token(rt1, user.id, new_family_id(), clock.now + timedelta(hours=1))
    clock.advance(hours=1)
    _, rt2 = new_refresh_token()
    assert await store.rotate_refresh_token(rt1, rt2, clock.now + timedelta(days=1)) is False
    assert await store.get_refresh_token(rt2) is None
    assert await store.delete_expired_refresh_tokens() == 1
    assert await store.get_refresh_token(rt1) is None


async def test_concurrent_rotation_of_one_token_succeeds_once(store: Store, clock: FakeNow) -> None:
    user = await store.create_user("r@example.com", "R", "h")
    _, rt1 = new_refresh_token()
    expires = clock.now + timedelta(days=1)
    await store.store_refresh_token(rt1, user.id, new_family_id(), expires)
    candidates = [new_refresh_token()[1] for _ in range(8)]
    results = await asyncio.gather(
        *(store.rotate_refresh_token(rt1, c, expires) for c in candidates)
    )
    assert sorted(results) == [False] * 7 + [True]
    winner = candidates[results.index(True)]
    old = await store.get_refresh_token(rt1)
    assert old is not None and old.replaced_by == winner
    present = [c for c in candidates if await store.get_refresh_token(c) is not None]
    assert present == [winner]


async def test_rotation_is_atomic_across_two_stores_on_one_database(
    backend: StoreBackend,
) -> None:
    a, b = await backend.open(), await backend.open()
    try:
        user = await a.create_user("r@example.com", "R", "h")
        _, rt1 = new_refresh_token()
        expires = datetime.now(UTC) + timedelta(days=1)
        await a.store_refresh_token(rt1, user.id, new_family_id(), expires)
        results = await asyncio.gather(
            a.rotate_refresh_token(rt1, new_refresh_token()[1], expires),
            b.rotate_refresh_token(rt1, new_refresh_token()[1], expires),
        )
        assert sorted(results) == [False, True]
    finally:
        await a.close()
        await b.close()


async def test_revoke_token_family(store: Store, clock: FakeNow) -> None:
    user = await store.create_user("r@example.com", "R", "h")
    family, other_family = new_family_id(), new_family_id()
    expires = clock.now + timedelta(days=1)
    _, rt1 = new_refresh_token()
    _, rt2 = new_refresh_token()
    _, other = new_refresh_token()
    await store.store_refresh_token(rt1, user.id, family, expires)
    assert await store.rotate_refresh_token(rt1, rt2, expires)
    await store.store_refresh_token(other, user.id, other_family, expires)

    assert await store.revoke_token_family(family) == 1  # rt1 was already revoked by rotation
    rt2_row = await store.get_refresh_token(rt2)
    assert rt2_row is not None and not rt2_row.usable(clock.now)
    assert await store.rotate_refresh_token(rt2, new_refresh_token()[1], expires) is False
    other_row = await store.get_refresh_token(other)
    assert other_row is not None and other_row.usable(clock.now)
    assert await store.revoke_token_family(family) == 0


async def test_refresh_token_for_unknown_user(store: Store, clock: FakeNow) -> None:
    with pytest.raises(NotFound):
        await store.store_refresh_token(
            new_refresh_token()[1], "usr_0000000000000000", new_family_id(), clock.now
        )


async def test_naive_timestamps_are_refused(store: Store) -> None:
    user = await store.create_user("r@example.com", "R", "h")
    with pytest.raises(ValueError, match="timezone"):
        await store.store_refresh_token(
            new_refresh_token()[1], user.id, new_family_id(), datetime(2030, 1, 1)
        )


async def test_postgres_a_pg_dump_restores_into_a_working_store(
    postgres_server: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    # The backup procedure of the README: pg_dump of a live database, pg_restore into an
    # empty one, and a store on the copy that has everything (the triggers included).
    store = await PostgresStore.open(pg_url)
    try:
        user_id, tenant_id = await user_and_tenant(store)
        _, key_hash = new_api_key()
        await store.create_api_key(tenant_id, key_hash, "backed-up")
        dump = tmp_path / "nexus.dump"
        await asyncio.to_thread(
            subprocess.run,
            [str(postgres_server.bindir / "pg_dump"), "--format=custom", f"--file={dump}",
             "--exclude-table-data=rate_hits", pg_url],
            check=True, capture_output=True,
        )  # fmt: skip
    finally:
        await store.close()
    copy_url = postgres_server.create_database("restored")
    try:
        await asyncio.to_thread(
            subprocess.run,
            [str(postgres_server.bindir / "pg_restore"), "--no-owner", "-d", copy_url, str(dump)],
            check=True, capture_output=True,
        )  # fmt: skip
        restored = await PostgresStore.open(copy_url)
        try:
            assert await restored.get_user(user_id) is not None
            key = await restored.lookup_api_key(key_hash)
            assert key is not None and key.label == "backed-up"
            cache = CredentialCache()
            await restored.watch_credentials(cache)
            tenant = await restored.get_tenant(tenant_id)
            assert tenant is not None
            cache.put_key(key, tenant)
            await restored.revoke_api_key(tenant_id, key_hash)
            deadline = time.monotonic() + 1
            while cache.key(key_hash) is not None:
                assert time.monotonic() < deadline, "the restored triggers did not notify"
                await asyncio.sleep(0.01)
        finally:
            await restored.close()
    finally:
        postgres_server.drop_database(copy_url)
