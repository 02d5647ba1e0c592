""":class:`PostgresStore`: the :class:`~.base.Store` on a PostgreSQL database that several
replicas share.

Driver: psycopg 3 (async) with psycopg_pool. It speaks libpq, so a ``postgresql://`` URL means
what it means to ``psql``: ``sslmode=verify-full``, ``sslrootcert``, several hosts with
``target_session_attrs=read-write`` for a failover pair, ``PG*`` variables, a passfile. It ships
its own type information (``mypy --strict`` needs no stubs).

Correct with any number of replicas at once:

* every check-then-write is one statement or one transaction whose rows are locked
  (``UPDATE ... WHERE <still valid> RETURNING``, ``SELECT ... FOR SHARE``), so that of two
  replicas racing on one refresh token, one email or one tenant, exactly one wins;
* credential changes reach every replica's cache through :class:`~.feed.CredentialFeed`;
* rate limits are counted in the database (``nexus_rate_hit``), so they hold across replicas.

Reads run in autocommit mode (one round trip each) and are retried once on a broken
connection (the pool replaces it); writes are never retried, since a write whose commit was
cut off may or may not have happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from nexus.api.ratelimit import RateLimiter
from nexus.api.store.base import (
    LAST_USED_RESOLUTION,
    ApiKey,
    ConstraintViolation,
    CredentialSink,
    EmailTaken,
    NotFound,
    RefreshToken,
    StoreError,
    Tenant,
    User,
    check_text,
    cr_name_for,
    new_tenant_id,
    new_user_id,
    normalize_email,
    round_ts,
    utcnow,
)
from nexus.api.store.feed import CredentialFeed
from nexus.api.store.migrations.postgres import migrate

__all__ = ["PostgresStore", "SharedLimiter", "describe_url"]

log = structlog.get_logger("nexus.api.store")

_ID_ATTEMPTS = 5

_Conn = psycopg.AsyncConnection[TupleRow]
_Row = tuple[Any, ...]

_USER_COLS = "id, email, display_name, password_hash, created_at"
_TENANT_COLS = "t.id, t.cr_name, t.display_name, t.node_profile, t.created_at, t.deleted_at"
_KEY_COLS = "k.hash, k.tenant_id, k.label, k.created_at, k.last_used_at, k.revoked_at"
_RT_COLS = "hash, user_id, family_id, expires_at, created_at, revoked_at, replaced_by"


def describe_url(url: str) -> str:
    """``host:port/dbname`` of a URL, for logs: never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    return f"{params.get('host', '')}:{params.get('port', '5432')}/{params.get('dbname', '')}"


def _utc(ts: datetime | None) -> datetime | None:
    # psycopg answers in the session's time zone, whatever the server is configured with.
    return None if ts is None else ts.astimezone(UTC)


def _user(row: _Row) -> User:
    return User(row[0], row[1], row[2], row[3], row[4].astimezone(UTC))


def _tenant(row: _Row) -> Tenant:
    return Tenant(row[0], row[1], row[2], row[3], row[4].astimezone(UTC), _utc(row[5]))


def _api_key(row: _Row) -> ApiKey:
    return ApiKey(row[0], row[1], row[2], row[3].astimezone(UTC), _utc(row[4]), _utc(row[5]))


def _refresh_token(row: _Row) -> RefreshToken:
    return RefreshToken(
        row[0], row[1], row[2], row[3].astimezone(UTC), row[4].astimezone(UTC), _utc(row[5]),
        row[6],
    )  # fmt: skip


def _has_nul(*values: str) -> bool:
    # PostgreSQL text cannot hold NUL, so no stored row matches such a value: a lookup by it
    # answers "none" instead of failing.
    return any("\x00" in v for v in values)


class PostgresStore:
    """:class:`~.base.Store` on PostgreSQL through a psycopg connection pool.

    Create it with ``await PostgresStore.open(url)`` (which migrates the schema under an
    advisory lock); call :meth:`close` when done.
    """

    def __init__(
        self,
        url: str,
        pool: AsyncConnectionPool[_Conn],
        clock: Callable[[], datetime],
        acquire_timeout: float,
    ) -> None:
        self._url = url
        self._pool: AsyncConnectionPool[_Conn] | None = pool
        self._now = clock
        self._acquire_timeout = acquire_timeout
        self._feed: CredentialFeed | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        min_size: int = 2,
        max_size: int = 10,
        connect_timeout: float = 30.0,
        acquire_timeout: float = 10.0,
    ) -> PostgresStore:
        """Connect (retrying for up to ``connect_timeout`` s), migrate, and open the pool.

        Raises :class:`StoreError` if the database cannot be reached in time and
        :class:`~nexus.api.store.migrations.MigrationError` if its schema is newer than this
        build.
        """
        where = describe_url(url)
        conn = await _connect_with_retry(url, connect_timeout, where)
        try:
            await migrate(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot migrate {where}: {exc}") from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[_Conn] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
            name="nexus-store",
            timeout=acquire_timeout,
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreError(f"cannot open a connection pool to {where}: {exc}") from exc
        log.info("store opened", backend="postgres", database=where, pool_max=max_size)
        return cls(url, pool, clock, acquire_timeout)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if self._feed is not None:
            await self._feed.stop()
        if pool is not None:
            await pool.close()
            log.info("store closed", backend="postgres", database=describe_url(self._url))

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def watch_credentials(self, sink: CredentialSink) -> None:
        if self._feed is None:
            self._feed = CredentialFeed(self._url)
        self._feed.add(sink)
        await self._feed.start()

    @property
    def feed(self) -> CredentialFeed | None:
        """The credential feed, once :meth:`watch_credentials` started it (tests, metrics)."""
        return self._feed

    def rate_limiter(self, limit: int, window: float) -> RateLimiter:
        return SharedLimiter(self, limit, window)

    # -- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[_Conn]:
        """A pooled connection (autocommit); psycopg errors become :class:`StoreError`."""
        pool = self._pool
        if pool is None:
            raise StoreError("store is closed")
        try:
            async with pool.connection(timeout=self._acquire_timeout) as conn:
                yield conn
        except pg_errors.IntegrityError as exc:
            raise ConstraintViolation(str(exc), exc.diag.constraint_name) from exc
        except PoolTimeout as exc:
            raise StoreError(f"no database connection available: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[_Row]:
        """One read statement; retried once if the connection turns out broken."""
        for attempt in (1, 2):
            try:
                async with self._conn() as conn:
                    cur = await conn.execute(query, params)
                    return await cur.fetchall()
            except StoreError as exc:
                broken = isinstance(exc.__cause__, psycopg.OperationalError) and not isinstance(
                    exc.__cause__, PoolTimeout
                )
                pool = self._pool
                if attempt == 2 or not broken or pool is None:
                    raise
                # A restart or failover of the server breaks every idle connection at once:
                # test them all (and replace the dead) before the retry takes one.
                log.info("store.read_retry", error=str(exc)[:200])
                await pool.check()
        raise AssertionError("unreachable")

    async def _execute(self, query: str, params: Sequence[Any] = ()) -> int:
        """One write statement in autocommit mode; returns the row count."""
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            return cur.rowcount

    # -- users ----------------------------------------------------------------------------

    async def create_user(self, email: str, display_name: str, password_hash: str) -> User:
        check_text(email, display_name, password_hash)
        norm = normalize_email(email)
        created = round_ts(self._now())
        for _ in range(_ID_ATTEMPTS):
            user = User(new_user_id(), email, display_name, password_hash, created)
            try:
                # The unique index decides between two replicas registering one email at once:
                # the second INSERT waits for the first to commit, then fails.
                await self._execute(
                    "INSERT INTO users (id, email, email_norm, display_name, password_hash,"
                    " created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    (user.id, email, norm, display_name, password_hash, created),
                )
            except ConstraintViolation as exc:
                if exc.constraint == "users_email_norm":
                    raise EmailTaken(email) from exc
                if exc.constraint == "users_pkey":
                    continue  # id collision: draw another
                raise
            log.info("user created", user_id=user.id)
            return user
        raise StoreError("could not allocate a user id")

    async def get_user_by_email(self, email: str) -> User | None:
        check_text(email)
        rows = await self._fetch(
            f"SELECT {_USER_COLS} FROM users WHERE email_norm = %s", (normalize_email(email),)
        )
        return _user(rows[0]) if rows else None

    async def get_user(self, user_id: str) -> User | None:
        if _has_nul(user_id):
            return None
        rows = await self._fetch(f"SELECT {_USER_COLS} FROM users WHERE id = %s", (user_id,))
        return _user(rows[0]) if rows else None

    # -- tenants --------------------------------------------------------------------------

    async def create_tenant(
        self, owner_user_id: str, display_name: str, node_profile: str
    ) -> Tenant:
        check_text(display_name, node_profile)
        if _has_nul(owner_user_id):
            raise NotFound(f"user {owner_user_id!r} does not exist")
        created = round_ts(self._now())
        for _ in range(_ID_ATTEMPTS):
            tenant_id = new_tenant_id()
            tenant = Tenant(tenant_id, cr_name_for(tenant_id), display_name, node_profile, created)
            try:
                async with self._conn() as conn, conn.transaction():
                    await conn.execute(
                        "INSERT INTO tenants (id, cr_name, display_name, node_profile, created_at)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        (tenant.id, tenant.cr_name, display_name, node_profile, created),
                    )
                    await conn.execute(
                        "INSERT INTO tenant_users (tenant_id, user_id, role)"
                        " VALUES (%s, %s, 'owner')",
                        (tenant.id, owner_user_id),
                    )
            except ConstraintViolation as exc:
                if exc.constraint == "tenant_users_user_id_fkey":
                    raise NotFound(f"user {owner_user_id!r} does not exist") from exc
                if exc.constraint in ("tenants_pkey", "tenants_cr_name_key"):
                    continue  # id (and so cr_name) collision: draw another
                raise StoreError(f"create tenant failed: {exc}") from exc
            log.info("tenant created", tenant_id=tenant.id, owner=owner_user_id)
            return tenant
        raise StoreError("could not allocate a tenant id")

    async def delete_tenant(self, tenant_id: str) -> bool:
        if _has_nul(tenant_id):
            return False
        now = self._now()
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tenants SET deleted_at = %s WHERE id = %s AND deleted_at IS NULL",
                (now, tenant_id),
            )
            if cur.rowcount == 0:
                return False
            keys = await conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE tenant_id = %s AND revoked_at IS NULL",
                (now, tenant_id),
            )
            revoked = keys.rowcount
        log.info("tenant deleted", tenant_id=tenant_id, keys_revoked=revoked)
        return True

    async def purge_tenant(self, tenant_id: str) -> bool:
        if _has_nul(tenant_id):
            return False
        # Owner links and keys go with it through ON DELETE CASCADE.
        purged = await self._execute("DELETE FROM tenants WHERE id = %s", (tenant_id,)) > 0
        if purged:
            log.info("tenant purged", tenant_id=tenant_id)
        return purged

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        if _has_nul(tenant_id):
            return None
        rows = await self._fetch(
            f"SELECT {_TENANT_COLS} FROM tenants t WHERE t.id = %s AND t.deleted_at IS NULL",
            (tenant_id,),
        )
        return _tenant(rows[0]) if rows else None

    async def list_user_tenants(self, user_id: str) -> list[Tenant]:
        if _has_nul(user_id):
            return []
        rows = await self._fetch(
            f"SELECT {_TENANT_COLS} FROM tenants t JOIN tenant_users tu ON tu.tenant_id = t.id"
            " WHERE tu.user_id = %s AND t.deleted_at IS NULL ORDER BY t.created_at, t.id",
            (user_id,),
        )
        return [_tenant(r) for r in rows]

    async def user_owns_tenant(self, user_id: str, tenant_id: str) -> bool:
        if _has_nul(user_id, tenant_id):
            return False
        rows = await self._fetch(
            "SELECT 1 FROM tenant_users tu JOIN tenants t ON t.id = tu.tenant_id"
            " WHERE tu.user_id = %s AND tu.tenant_id = %s AND tu.role = 'owner'"
            " AND t.deleted_at IS NULL",
            (user_id, tenant_id),
        )
        return bool(rows)

    # -- API keys -------------------------------------------------------------------------

    async def create_api_key(self, tenant_id: str, key_hash: str, label: str) -> ApiKey:
        check_text(label)
        if _has_nul(tenant_id):
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        created = round_ts(self._now())
        try:
            async with self._conn() as conn, conn.transaction():
                # FOR SHARE holds off a concurrent delete_tenant until this commits (its key
                # revocation then sees the new key), or, if the delete committed first, sees
                # the row deleted: no live key of a deleted tenant either way.
                cur = await conn.execute(
                    "SELECT 1 FROM tenants WHERE id = %s AND deleted_at IS NULL FOR SHARE",
                    (tenant_id,),
                )
                if await cur.fetchone() is None:
                    raise NotFound(f"tenant {tenant_id!r} does not exist")
                await conn.execute(
                    "INSERT INTO api_keys (hash, tenant_id, label, created_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (key_hash, tenant_id, label, created),
                )
        except ConstraintViolation as exc:
            if exc.constraint == "api_keys_tenant_id_fkey":
                raise NotFound(f"tenant {tenant_id!r} does not exist") from exc
            # A duplicate 256-bit hash or a malformed one: a caller bug, not a user error.
            raise StoreError(f"create api key failed: {exc}") from exc
        log.info("api key created", tenant_id=tenant_id, key_hash=key_hash)
        return ApiKey(key_hash, tenant_id, label, created)

    async def list_api_keys(self, tenant_id: str) -> list[ApiKey]:
        if _has_nul(tenant_id):
            return []
        rows = await self._fetch(
            f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.tenant_id = %s AND k.revoked_at IS NULL"
            " ORDER BY k.created_at, k.hash",
            (tenant_id,),
        )
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, tenant_id: str, key_hash: str) -> bool:
        if _has_nul(tenant_id, key_hash):
            return False
        # The tenant id in the WHERE clause is the isolation: another tenant's hash matches no
        # row, so nothing is revoked and the caller answers 404.
        revoked = (
            await self._execute(
                "UPDATE api_keys SET revoked_at = %s"
                " WHERE hash = %s AND tenant_id = %s AND revoked_at IS NULL",
                (self._now(), key_hash, tenant_id),
            )
            > 0
        )
        if revoked:
            log.info("api key revoked", tenant_id=tenant_id, key_hash=key_hash)
        return revoked

    async def lookup_api_key(self, key_hash: str) -> ApiKey | None:
        if _has_nul(key_hash):
            return None
        rows = await self._fetch(
            f"SELECT {_KEY_COLS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
            " WHERE k.hash = %s AND k.revoked_at IS NULL AND t.deleted_at IS NULL",
            (key_hash,),
        )
        if not rows:
            return None
        key = _api_key(rows[0])
        now = round_ts(self._now())
        if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
            return key
        try:
            # The condition repeats the check so that a burst of requests with the same stale
            # key, on any number of replicas, writes once.
            await self._execute(
                "UPDATE api_keys SET last_used_at = %s WHERE hash = %s AND revoked_at IS NULL"
                " AND (last_used_at IS NULL OR last_used_at <= %s)",
                (now, key_hash, now - LAST_USED_RESOLUTION),
            )
        except StoreError as exc:
            # Bookkeeping must not turn a valid key into a failed request.
            log.warning("api key last_used_at not updated", key_hash=key_hash, error=str(exc))
            return key
        return ApiKey(key.hash, key.tenant_id, key.label, key.created_at, now, key.revoked_at)

    # -- refresh tokens -------------------------------------------------------------------

    async def store_refresh_token(
        self, token_hash: str, user_id: str, family_id: str, expires_at: datetime
    ) -> RefreshToken:
        created = round_ts(self._now())
        expires = round_ts(expires_at)  # also refuses naive datetimes (ValueError)
        try:
            await self._execute(
                f"INSERT INTO refresh_tokens ({_RT_COLS}) VALUES (%s, %s, %s, %s, %s, NULL, NULL)",
                (token_hash, user_id, family_id, expires, created),
            )
        except ConstraintViolation as exc:
            if exc.constraint == "refresh_tokens_user_id_fkey":
                raise NotFound(f"user {user_id!r} does not exist") from exc
            raise StoreError(f"store refresh token failed: {exc}") from exc
        return RefreshToken(token_hash, user_id, family_id, expires, created)

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        if _has_nul(token_hash):
            return None
        rows = await self._fetch(
            f"SELECT {_RT_COLS} FROM refresh_tokens WHERE hash = %s", (token_hash,)
        )
        return _refresh_token(rows[0]) if rows else None

    async def rotate_refresh_token(
        self, old_hash: str, new_hash: str, expires_at: datetime
    ) -> bool:
        """Atomically revoke ``old_hash`` (pointing it at ``new_hash``) and store ``new_hash``.

        The guarded UPDATE is the whole check: a second replica rotating the same token at
        the same moment waits on the row lock, then re-reads the row, finds it revoked and
        matches nothing. So of any number of concurrent rotations exactly one succeeds.
        """
        if _has_nul(old_hash):
            return False
        now = round_ts(self._now())
        expires = round_ts(expires_at)
        try:
            async with self._conn() as conn, conn.transaction():
                cur = await conn.execute(
                    "UPDATE refresh_tokens SET revoked_at = %s, replaced_by = %s"
                    " WHERE hash = %s AND revoked_at IS NULL AND expires_at > %s"
                    " RETURNING user_id, family_id",
                    (now, new_hash, old_hash, now),
                )
                row = await cur.fetchone()
                if row is None:
                    return False
                await conn.execute(
                    f"INSERT INTO refresh_tokens ({_RT_COLS})"
                    " VALUES (%s, %s, %s, %s, %s, NULL, NULL)",
                    (new_hash, row[0], row[1], expires, now),
                )
        except ConstraintViolation as exc:
            raise StoreError(f"rotate refresh token failed: {exc}") from exc
        return True

    async def revoke_token_family(self, family_id: str) -> int:
        if _has_nul(family_id):
            return 0
        count = await self._execute(
            "UPDATE refresh_tokens SET revoked_at = %s WHERE family_id = %s AND revoked_at IS NULL",
            (self._now(), family_id),
        )
        log.info("refresh token family revoked", family_id=family_id, tokens=count)
        return count

    async def delete_expired_refresh_tokens(self) -> int:
        count = await self._execute(
            "DELETE FROM refresh_tokens WHERE expires_at <= %s", (self._now(),)
        )
        if count:
            log.info("expired refresh tokens deleted", tokens=count)
        return count

    # -- rate limits ----------------------------------------------------------------------

    async def rate_hit(self, key: str, limit: int, window: float) -> float | None:
        """One hit of ``key`` against the shared sliding log; see :class:`SharedLimiter`."""
        # Keys are client input (addresses, emails): the table keeps their digests, which any
        # text has (NUL and lone surrogates included) and which reveal no one's email.
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        rows = await self._execute_fetch(
            "SELECT nexus_rate_hit(%s, %s, %s)", (digest, limit, window)
        )
        wait = rows[0][0] if rows else None
        return None if wait is None else float(wait)

    async def _execute_fetch(self, query: str, params: Sequence[Any]) -> list[_Row]:
        # A write that returns rows; never retried.
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()


class SharedLimiter:
    """:class:`~nexus.api.ratelimit.RateLimiter` counted in the database, so that every replica
    sharing it enforces one budget: an exact sliding log, as ``SlidingWindowLimiter``, whose
    hits of one key are serialised by an advisory lock and timed by the server's clock."""

    def __init__(self, store: PostgresStore, limit: int, window: float) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self._store = store
        self.limit = limit
        self.window = window

    async def hit(self, key: str) -> float | None:
        return await self._store.rate_hit(key, self.limit, self.window)


async def _connect_with_retry(url: str, timeout: float, where: str) -> _Conn:
    """A first connection, retried while the server is not (yet) reachable."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            return await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=max(1, int(min(timeout, 10)))
            )
        except psycopg.OperationalError as exc:
            # Bad credentials or a missing database will not fix themselves.
            message = str(exc)
            permanent = "password authentication failed" in message or "does not exist" in message
            if permanent or time.monotonic() + delay >= deadline:
                raise StoreError(f"cannot connect to {where}: {message.strip()}") from exc
            log.warning("store.connect_retry", database=where, error=message.strip()[:200])
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"invalid database URL: {exc}") from exc
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
