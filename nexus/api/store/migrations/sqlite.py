"""The SQLite store's schema migrations (the rules are in :mod:`nexus.api.store.migrations`)."""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from datetime import UTC, datetime

import aiosqlite
import structlog

from nexus.api.store.migrations import Migration, MigrationError, check_migrations, refuse_newer

__all__ = ["MIGRATIONS", "MigrationError", "current_version", "migrate", "split_statements"]

log = structlog.get_logger("nexus.api.store.migrations")

# The CHECK constraints repeat the application's own validation so that a bug in a caller
# cannot store a value that a later lookup would misread (an unhashed key, a stray role).
_V1 = """
CREATE TABLE users (
    id            TEXT PRIMARY KEY CHECK (id GLOB 'usr_*'),
    email         TEXT NOT NULL,
    email_norm    TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX users_email_norm ON users (email_norm);

CREATE TABLE tenants (
    id           TEXT PRIMARY KEY CHECK (id GLOB 't_*'),
    cr_name      TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    node_profile TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    deleted_at   TEXT
);

CREATE TABLE tenant_users (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      TEXT NOT NULL DEFAULT 'owner' CHECK (role IN ('owner')),
    PRIMARY KEY (tenant_id, user_id)
);
-- The primary key serves lookups by tenant; listing a user's tenants needs its own index.
CREATE INDEX tenant_users_user ON tenant_users (user_id);

CREATE TABLE api_keys (
    hash         TEXT PRIMARY KEY
                 CHECK (length(hash) = 64 AND hash NOT GLOB '*[^0-9a-f]*'),
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label        TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE refresh_tokens (
    hash        TEXT PRIMARY KEY
                CHECK (length(hash) = 64 AND hash NOT GLOB '*[^0-9a-f]*'),
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    replaced_by TEXT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
"""

#: Every schema version, oldest first. Append only.
MIGRATIONS: list[Migration] = [
    (1, _V1),
]

_SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)
"""


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements.

    Statements are executed one by one instead of with ``executescript`` because
    ``executescript`` commits any open transaction first, which would break the
    one-transaction-per-migration guarantee. ``sqlite3.complete_statement`` keeps semicolons
    inside string literals, comments and trigger bodies from splitting a statement.
    """
    statements: list[str] = []
    buf = ""
    for piece in sql.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if _strip_comments(buf).strip(" \t\r\n;"):
                statements.append(buf.strip())
            buf = ""
    if _strip_comments(buf).strip(" \t\r\n;"):
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {buf!r}")
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


async def current_version(db: aiosqlite.Connection) -> int:
    """The highest applied version, 0 for an empty database."""
    rows = list(await db.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
    return int(rows[0][0])


async def migrate(db: aiosqlite.Connection, migrations: list[Migration] | None = None) -> int:
    """Apply every migration newer than the database; return the resulting version.

    ``db`` must be in autocommit mode (``isolation_level=None``): transactions are explicit.
    Safe to run concurrently from several processes on the same file: each migration takes
    the write lock (``BEGIN IMMEDIATE``) and re-reads the version under it, so a migration
    another process applied in the meantime is skipped rather than applied twice.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    latest = check_migrations(migrations)
    # Under the write lock, like the migrations: an autocommit write would not wait for a
    # concurrent opener's transaction the same way.
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute(_SCHEMA_VERSION_DDL)
        version = await current_version(db)
        await db.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.OperationalError):
            await db.execute("ROLLBACK")
        raise
    refuse_newer(version, latest)
    for target, sql in migrations:
        if target <= version:
            continue
        statements = split_statements(sql)
        await db.execute("BEGIN IMMEDIATE")
        try:
            if await current_version(db) >= target:
                await db.execute("ROLLBACK")
                continue
            for statement in statements:
                await db.execute(statement)
            await db.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (target, datetime.now(UTC).isoformat()),
            )
            await db.execute("COMMIT")
        except BaseException:
            # Also on cancellation: the connection must not be left inside a transaction.
            # OperationalError: SQLite already rolled back (e.g. a statement hit SQLITE_FULL).
            with suppress(sqlite3.OperationalError):
                await db.execute("ROLLBACK")
            raise
        log.info("store.schema_migrated", version=target)
        version = target
    return version
