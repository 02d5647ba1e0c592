""":class:`SqliteStore`: the :class:`~.base.Store` on one SQLite file (the embedded default).

One replica only: the file is the only copy of the data, and the credential cache and rate
limits of the API are those of this one process.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from nexus.api.ratelimit import InProcessLimiter, RateLimiter, SlidingWindowLimiter
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
    format_ts,
    new_tenant_id,
    new_user_id,
    normalize_email,
    parse_ts,
    round_ts,
    utcnow,
)
from nexus.api.store.migrations.sqlite import migrate

__all__ = ["SqliteStore"]

log = structlog.get_logger("nexus.api.store")

# Random ids can collide in theory; a handful of retries turns "in theory" into "never".
_ID_ATTEMPTS = 5


def _opt_ts(raw: str | None) -> datetime | None:
    return None if raw is None else parse_ts(raw)


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        display_name=row["display_name"],
        password_hash=row["password_hash"],
        created_at=parse_ts(row["created_at"]),
    )


def _tenant(row: sqlite3.Row) -> Tenant:
    return Tenant(
        id=row["id"],
        cr_name=row["cr_name"],
        display_name=row["display_name"],
        node_profile=row["node_profile"],
        created_at=parse_ts(row["created_at"]),
        deleted_at=_opt_ts(row["deleted_at"]),
    )


def _api_key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        hash=row["hash"],
        tenant_id=row["tenant_id"],
        label=row["label"],
        created_at=parse_ts(row["created_at"]),
        last_used_at=_opt_ts(row["last_used_at"]),
        revoked_at=_opt_ts(row["revoked_at"]),
    )


def _refresh_token(row: sqlite3.Row) -> RefreshToken:
    return RefreshToken(
        hash=row["hash"],
        user_id=row["user_id"],
        family_id=row["family_id"],
        expires_at=parse_ts(row["expires_at"]),
        created_at=parse_ts(row["created_at"]),
        revoked_at=_opt_ts(row["revoked_at"]),
        replaced_by=row["replaced_by"],
    )


_USER_COLS = "id, email, display_name, password_hash, created_at"
_TENANT_COLS = "t.id, t.cr_name, t.display_name, t.node_profile, t.created_at, t.deleted_at"
_KEY_COLS = "k.hash, k.tenant_id, k.label, k.created_at, k.last_used_at, k.revoked_at"
_RT_COLS = "hash, user_id, family_id, expires_at, created_at, revoked_at, replaced_by"


class SqliteStore:
    """:class:`Store` on one SQLite file in WAL mode.

    Two connections: a writer, used under an :class:`asyncio.Lock` so that the transactions of
    concurrent tasks never interleave on it, and a read-only reader, which in WAL mode sees the
    last committed state without waiting for the writer. Writes use ``BEGIN IMMEDIATE`` so that
    even another process on the same file cannot slip in between a check and the write that
    depends on it. ``synchronous=FULL`` makes every acknowledged commit survive power loss.

    Create it with ``await SqliteStore.open(path)``; call :meth:`close` when done (aiosqlite's
    worker threads keep the process alive otherwise).
    """

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        clock: Callable[[], datetime],
    ) -> None:
        self._path = path
        self._writer: aiosqlite.Connection | None = writer
        self._reader: aiosqlite.Connection | None = reader
        self._now = clock
        self._write_lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], datetime] = utcnow,
        busy_timeout_ms: int = 5000,
    ) -> SqliteStore:
        """Open (creating if needed) and migrate the database at ``path``.

        ``clock`` returns the current aware UTC time; tests replace it to move time.
        ``busy_timeout_ms`` is how long a statement waits for another connection's write lock
        (SQLite's ``busy_timeout``) before it fails with "database is locked". Raises
        :class:`StoreError` if the file cannot be opened in WAL mode and
        :class:`~nexus.api.store.migrations.MigrationError` if its schema is newer than this build.
        """
        path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            # A private in-memory database would not be shared by the two connections.
            raise ValueError("SqliteStore needs a file path")
        writer: aiosqlite.Connection | None = None
        reader: aiosqlite.Connection | None = None
        try:
            writer = await _connect(path, busy_timeout_ms, read_only=False)
            await migrate(writer)
            reader = await _connect(path, busy_timeout_ms, read_only=True)
        except BaseException as exc:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store at {path}: {exc}") from exc
            raise
        log.info("store.opened", path=str(path))
        return cls(path, writer, reader, clock)

    async def close(self) -> None:
        # The lock lets an in-flight transaction finish instead of being cut off.
        async with self._write_lock:
            writer, reader = self._writer, self._reader
            self._writer = self._reader = None
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
        if writer is not None:
            log.info("store.closed", path=str(self._path))

    async def ping(self) -> None:
        await self._read("SELECT COUNT(*) FROM schema_version")

    async def watch_credentials(self, sink: CredentialSink) -> None:
        # One process writes this file (one replica), and the handlers that revoke invalidate
        # the cache themselves; the cache's TTL bounds what a restored file could leave stale.
        return None

    def rate_limiter(self, limit: int, window: float) -> RateLimiter:
        return InProcessLimiter(SlidingWindowLimiter(limit, window))

    async def pragmas(self) -> dict[str, object]:
        """The writer's durability settings as SQLite reports them (diagnostics, tests)."""
        values: dict[str, object] = {}
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StoreError("store is closed")
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
                rows = list(await conn.execute_fetchall(f"PRAGMA {name}"))
                values[name] = rows[0][0]
        return values

    # -- plumbing -------------------------------------------------------------------------

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        conn = self._reader
        if conn is None:
            raise StoreError("store is closed")
        try:
            return list(await conn.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; commits on normal exit, rolls back on any exception."""
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StoreError("store is closed")
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                # aiosqlite runs statements in order on one thread, so this ROLLBACK lands
                # after whatever was queued before a cancellation, never in the middle of it.
                # sqlite3.Error here: no transaction was open (BEGIN failed, or SQLite already
                # rolled back on its own).
                with suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise ConstraintViolation(str(exc)) from exc
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"write failed: {exc}") from exc
                raise

    # -- users ----------------------------------------------------------------------------

    async def create_user(self, email: str, display_name: str, password_hash: str) -> User:
        check_text(email, display_name, password_hash)
        norm = normalize_email(email)
        created = self._now()
        for _ in range(_ID_ATTEMPTS):
            user = User(new_user_id(), email, display_name, password_hash, created)
            try:
                async with self._transaction() as db:
                    taken = await db.execute_fetchall(
                        "SELECT 1 FROM users WHERE email_norm = ?", (norm,)
                    )
                    if list(taken):
                        raise EmailTaken(email)
                    await db.execute(
                        "INSERT INTO users (id, email, email_norm, display_name, password_hash,"
                        " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (user.id, email, norm, display_name, password_hash, format_ts(created)),
                    )
            except ConstraintViolation as exc:
                if "email_norm" in str(exc):
                    raise EmailTaken(email) from exc
                continue  # id collision: draw another
            log.info("store.user_created", user_id=user.id)
            return user
        raise StoreError("could not allocate a user id")

    async def get_user_by_email(self, email: str) -> User | None:
        check_text(email)
        rows = await self._read(
            f"SELECT {_USER_COLS} FROM users WHERE email_norm = ?", (normalize_email(email),)
        )
        return _user(rows[0]) if rows else None

    async def get_user(self, user_id: str) -> User | None:
        rows = await self._read(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    # -- tenants --------------------------------------------------------------------------

    async def create_tenant(
        self, owner_user_id: str, display_name: str, node_profile: str
    ) -> Tenant:
        check_text(display_name, node_profile)
        created = self._now()
        for _ in range(_ID_ATTEMPTS):
            tenant_id = new_tenant_id()
            tenant = Tenant(tenant_id, cr_name_for(tenant_id), display_name, node_profile, created)
            try:
                async with self._transaction() as db:
                    owner = await db.execute_fetchall(
                        "SELECT 1 FROM users WHERE id = ?", (owner_user_id,)
                    )
                    if not list(owner):
                        raise NotFound(f"user {owner_user_id!r} does not exist")
                    await db.execute(
                        "INSERT INTO tenants (id, cr_name, display_name, node_profile, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (tenant.id, tenant.cr_name, display_name, node_profile, format_ts(created)),
                    )
                    await db.execute(
                        "INSERT INTO tenant_users (tenant_id, user_id, role)"
                        " VALUES (?, ?, 'owner')",
                        (tenant.id, owner_user_id),
                    )
            except ConstraintViolation as exc:
                if "tenants." in str(exc):
                    continue  # id (and so cr_name) collision: draw another
                raise StoreError(f"create tenant failed: {exc}") from exc
            log.info("store.tenant_created", tenant_id=tenant.id, owner=owner_user_id)
            return tenant
        raise StoreError("could not allocate a tenant id")

    async def delete_tenant(self, tenant_id: str) -> bool:
        now = format_ts(self._now())
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE tenants SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (now, tenant_id),
            )
            if cur.rowcount == 0:
                return False
            keys = await db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL",
                (now, tenant_id),
            )
            revoked = keys.rowcount
        log.info("store.tenant_deleted", tenant_id=tenant_id, keys_revoked=revoked)
        return True

    async def purge_tenant(self, tenant_id: str) -> bool:
        async with self._transaction() as db:
            # Owner links and keys go with it through ON DELETE CASCADE.
            cur = await db.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
            purged = cur.rowcount > 0
        if purged:
            log.info("store.tenant_purged", tenant_id=tenant_id)
        return purged

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = await self._read(
            f"SELECT {_TENANT_COLS} FROM tenants t WHERE t.id = ? AND t.deleted_at IS NULL",
            (tenant_id,),
        )
        return _tenant(rows[0]) if rows else None

    async def list_user_tenants(self, user_id: str) -> list[Tenant]:
        rows = await self._read(
            f"SELECT {_TENANT_COLS} FROM tenants t JOIN tenant_users tu ON tu.tenant_id = t.id"
            " WHERE tu.user_id = ? AND t.deleted_at IS NULL ORDER BY t.created_at, t.id",
            (user_id,),
        )
        return [_tenant(r) for r in rows]

    async def user_owns_tenant(self, user_id: str, tenant_id: str) -> bool:
        rows = await self._read(
            "SELECT 1 FROM tenant_users tu JOIN tenants t ON t.id = tu.tenant_id"
            " WHERE tu.user_id = ? AND tu.tenant_id = ? AND tu.role = 'owner'"
            " AND t.deleted_at IS NULL",
            (user_id, tenant_id),
        )
        return bool(rows)

    # -- API keys -------------------------------------------------------------------------

    async def create_api_key(self, tenant_id: str, key_hash: str, label: str) -> ApiKey:
        check_text(label)
        created = self._now()
        try:
            async with self._transaction() as db:
                live = await db.execute_fetchall(
                    "SELECT 1 FROM tenants WHERE id = ? AND deleted_at IS NULL", (tenant_id,)
                )
                if not list(live):
                    raise NotFound(f"tenant {tenant_id!r} does not exist")
                await db.execute(
                    "INSERT INTO api_keys (hash, tenant_id, label, created_at) VALUES (?, ?, ?, ?)",
                    (key_hash, tenant_id, label, format_ts(created)),
                )
        except ConstraintViolation as exc:
            # A duplicate 256-bit hash or a malformed one: a caller bug, not a user error.
            raise StoreError(f"create api key failed: {exc}") from exc
        log.info("store.api_key_created", tenant_id=tenant_id, key_hash=key_hash)
        return ApiKey(key_hash, tenant_id, label, created)

    async def list_api_keys(self, tenant_id: str) -> list[ApiKey]:
        rows = await self._read(
            f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.tenant_id = ? AND k.revoked_at IS NULL"
            " ORDER BY k.created_at, k.hash",
            (tenant_id,),
        )
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, tenant_id: str, key_hash: str) -> bool:
        async with self._transaction() as db:
            # The tenant id in the WHERE clause is the isolation: another tenant's hash matches
            # no row, so nothing is revoked and the caller answers 404.
            cur = await db.execute(
                "UPDATE api_keys SET revoked_at = ?"
                " WHERE hash = ? AND tenant_id = ? AND revoked_at IS NULL",
                (format_ts(self._now()), key_hash, tenant_id),
            )
            revoked = cur.rowcount > 0
        if revoked:
            log.info("store.api_key_revoked", tenant_id=tenant_id, key_hash=key_hash)
        return revoked

    async def lookup_api_key(self, key_hash: str) -> ApiKey | None:
        rows = await self._read(
            f"SELECT {_KEY_COLS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
            " WHERE k.hash = ? AND k.revoked_at IS NULL AND t.deleted_at IS NULL",
            (key_hash,),
        )
        if not rows:
            return None
        key = _api_key(rows[0])
        now = self._now()
        if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
            return key
        try:
            async with self._transaction() as db:
                # The condition repeats the check so that a burst of requests with the same
                # stale key writes once, whichever of them gets the lock first.
                await db.execute(
                    "UPDATE api_keys SET last_used_at = ? WHERE hash = ? AND revoked_at IS NULL"
                    " AND (last_used_at IS NULL OR last_used_at <= ?)",
                    (format_ts(now), key_hash, format_ts(now - LAST_USED_RESOLUTION)),
                )
        except StoreError as exc:
            # Bookkeeping must not turn a valid key into a failed request.
            log.warning("store.api_key_last_used_not_updated", key_hash=key_hash, error=str(exc))
            return key
        return ApiKey(key.hash, key.tenant_id, key.label, key.created_at, now, key.revoked_at)

    # -- refresh tokens -------------------------------------------------------------------

    async def store_refresh_token(
        self, token_hash: str, user_id: str, family_id: str, expires_at: datetime
    ) -> RefreshToken:
        created = self._now()
        try:
            async with self._transaction() as db:
                await db.execute(
                    f"INSERT INTO refresh_tokens ({_RT_COLS}) VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                    (token_hash, user_id, family_id, format_ts(expires_at), format_ts(created)),
                )
        except ConstraintViolation as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"user {user_id!r} does not exist") from exc
            raise StoreError(f"store refresh token failed: {exc}") from exc
        return RefreshToken(token_hash, user_id, family_id, round_ts(expires_at), created)

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        rows = await self._read(
            f"SELECT {_RT_COLS} FROM refresh_tokens WHERE hash = ?", (token_hash,)
        )
        return _refresh_token(rows[0]) if rows else None

    async def rotate_refresh_token(
        self, old_hash: str, new_hash: str, expires_at: datetime
    ) -> bool:
        """Atomically revoke ``old_hash`` (pointing it at ``new_hash``) and store ``new_hash``.

        False, with nothing changed, when the old token is unknown, revoked or expired. The
        check and both writes share one ``BEGIN IMMEDIATE`` transaction, so of two concurrent
        rotations of the same token exactly one succeeds. A False for a token that exists and
        was revoked is reuse: the caller revokes the family (RFC 9700 §4.14.2).
        """
        now = self._now()
        try:
            async with self._transaction() as db:
                rows = list(
                    await db.execute_fetchall(
                        "SELECT user_id, family_id, expires_at, revoked_at FROM refresh_tokens"
                        " WHERE hash = ?",
                        (old_hash,),
                    )
                )
                if not rows:
                    return False
                row = rows[0]
                if row["revoked_at"] is not None or parse_ts(row["expires_at"]) <= now:
                    return False
                await db.execute(
                    "UPDATE refresh_tokens SET revoked_at = ?, replaced_by = ? WHERE hash = ?",
                    (format_ts(now), new_hash, old_hash),
                )
                await db.execute(
                    f"INSERT INTO refresh_tokens ({_RT_COLS}) VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                    (
                        new_hash,
                        row["user_id"],
                        row["family_id"],
                        format_ts(expires_at),
                        format_ts(now),
                    ),
                )
        except ConstraintViolation as exc:
            raise StoreError(f"rotate refresh token failed: {exc}") from exc
        return True

    async def revoke_token_family(self, family_id: str) -> int:
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE refresh_tokens SET revoked_at = ?"
                " WHERE family_id = ? AND revoked_at IS NULL",
                (format_ts(self._now()), family_id),
            )
            count = cur.rowcount
        log.info("store.refresh_family_revoked", family_id=family_id, tokens=count)
        return count

    async def delete_expired_refresh_tokens(self) -> int:
        async with self._transaction() as db:
            cur = await db.execute(
                "DELETE FROM refresh_tokens WHERE expires_at <= ?", (format_ts(self._now()),)
            )
            count = cur.rowcount
        if count:
            log.info("store.refresh_tokens_expired_deleted", tokens=count)
        return count


async def _connect(path: Path, busy_timeout_ms: int, *, read_only: bool) -> aiosqlite.Connection:
    # isolation_level=None: no implicit BEGIN from the sqlite3 module; transactions are explicit.
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = await _enable_wal(conn, busy_timeout_ms / 1000)
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot enable WAL journal mode (got {mode!r})")
        # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
        # 201 we sent must not be forgotten.
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            await conn.execute("PRAGMA query_only = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _enable_wal(conn: aiosqlite.Connection, timeout: float) -> object:
    """Switch the file to WAL and return the resulting mode.

    Converting a fresh file needs an exclusive lock and SQLite reports "database is locked"
    at once, without its busy handler, when another connection (a second replica starting at
    the same moment) holds any lock; so wait here instead.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.005
    while True:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
            return rows[0][0] if rows else None
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
