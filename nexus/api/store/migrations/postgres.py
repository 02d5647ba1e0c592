"""The PostgreSQL store's schema migrations (the rules are in :mod:`nexus.api.store.migrations`).

Several replicas may boot against one fresh database at the same moment. :func:`migrate` takes
a session-level advisory lock first, so that exactly one of them creates the schema and the
others wait, then find nothing left to do. The lock is scoped to the database and released
when the connection closes, so a replica killed mid-migration cannot wedge the others (and its
half-done migration was rolled back with its transaction).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from nexus.api.store.migrations import Migration, check_migrations, refuse_newer

__all__ = ["CREDENTIALS_CHANNEL", "MIGRATIONS", "MIGRATION_LOCK", "current_version", "migrate"]

log = structlog.get_logger("nexus.api.store.migrations")

#: The LISTEN/NOTIFY channel on which the triggers below report credential changes.
CREDENTIALS_CHANNEL = "nexus_credentials"

#: The advisory lock (one bigint key) held while migrating: a stable value derived from a name.
MIGRATION_LOCK = int.from_bytes(
    hashlib.sha256(b"nexus.api.store.migrations").digest()[:8], "big", signed=True
)

# The same tables as the SQLite schema, with native types. The CHECK constraints repeat the
# application's own validation so that a bug in a caller cannot store a value that a later
# lookup would misread (an unhashed key, a stray role).
_V1 = r"""
CREATE TABLE users (
    id            text PRIMARY KEY CHECK (id LIKE 'usr\_%'),
    email         text NOT NULL,
    email_norm    text NOT NULL,
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_email_norm ON users (email_norm);

CREATE TABLE tenants (
    id           text PRIMARY KEY CHECK (id LIKE 't\_%'),
    cr_name      text NOT NULL UNIQUE,
    display_name text NOT NULL,
    node_profile text NOT NULL,
    created_at   timestamptz NOT NULL,
    deleted_at   timestamptz
);

CREATE TABLE tenant_users (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id   text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      text NOT NULL DEFAULT 'owner' CHECK (role IN ('owner')),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX tenant_users_user ON tenant_users (user_id);

CREATE TABLE api_keys (
    hash         text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{64}$'),
    tenant_id    text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label        text NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE refresh_tokens (
    hash        text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{64}$'),
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   text NOT NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    replaced_by text
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);

-- Every replica caches resolved credentials for a few seconds. These triggers report each
-- change to a cached row (whoever makes it: a replica, or psql behind the API's back) on
-- nexus_credentials; NOTIFY is transactional, so a listener hears of a change exactly when it
-- commits. Bookkeeping (api_keys.last_used_at) is filtered out.
CREATE FUNCTION nexus_notify_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('nexus_credentials', 'all');
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('nexus_credentials', 'key:' || OLD.hash);
    ELSIF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('nexus_credentials', 'tenant:' || OLD.id);
    ELSE
        PERFORM pg_notify('nexus_credentials', 'user:' || OLD.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed AFTER UPDATE ON api_keys FOR EACH ROW
    WHEN ((OLD.hash, OLD.tenant_id, OLD.label, OLD.revoked_at)
          IS DISTINCT FROM (NEW.hash, NEW.tenant_id, NEW.label, NEW.revoked_at))
    EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys FOR EACH ROW
    EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER tenants_changed AFTER UPDATE ON tenants FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER tenants_deleted AFTER DELETE ON tenants FOR EACH ROW
    EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER users_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER users_deleted AFTER DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER api_keys_truncated AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER tenants_truncated AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_notify_credentials();
CREATE TRIGGER users_truncated AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_notify_credentials();

-- /auth/* rate limits shared by every replica: an exact sliding log, one row per allowed hit.
-- UNLOGGED: the counts are worth no WAL; a crashed server forgets them, which can only make
-- the limits more lenient for a minute.
CREATE UNLOGGED TABLE rate_hits (
    key        text NOT NULL,
    at         timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX rate_hits_key ON rate_hits (key, at);
CREATE INDEX rate_hits_expires ON rate_hits (expires_at);

-- NULL if the hit is allowed (and recorded), else the seconds until one would be. The
-- server's clock, so that replicas with skewed clocks agree. Hits of one key are serialised
-- by a transaction-level advisory lock on the key's hash (two-int form: apart from the
-- one-bigint migration lock); a collision between two keys only makes them wait for each other.
CREATE FUNCTION nexus_rate_hit(p_key text, p_limit integer, p_window double precision)
RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
    now_ts  timestamptz := clock_timestamp();
    horizon timestamptz := now_ts - make_interval(secs => p_window);
    hits    integer;
    oldest  timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(1853387384, hashtext(p_key));
    DELETE FROM rate_hits WHERE key = p_key AND at <= horizon;
    SELECT count(*), min(at) INTO hits, oldest FROM rate_hits WHERE key = p_key;
    IF hits >= p_limit THEN
        RETURN greatest(extract(epoch FROM oldest - horizon)::double precision, 0);
    END IF;
    INSERT INTO rate_hits (key, at, expires_at)
        VALUES (p_key, now_ts, now_ts + make_interval(secs => p_window));
    -- Keys never hit again leave rows behind; sweeping now and then keeps the table small.
    IF random() < 0.01 THEN
        DELETE FROM rate_hits WHERE expires_at <= now_ts;
    END IF;
    RETURN NULL;
END
$$;
"""

#: Every schema version, oldest first. Append only.
MIGRATIONS: list[Migration] = [
    (1, _V1),
]

_SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL
)
"""


async def current_version(conn: psycopg.AsyncConnection[Any]) -> int:
    """The highest applied version, 0 for an empty database."""
    cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(
    conn: psycopg.AsyncConnection[Any], migrations: list[Migration] | None = None
) -> int:
    """Apply every migration newer than the database; return the resulting version.

    ``conn`` must be in autocommit mode: each migration runs in a transaction of its own.
    Holds :data:`MIGRATION_LOCK` throughout, including while creating ``schema_version``:
    concurrent ``CREATE TABLE IF NOT EXISTS`` statements can fail on PostgreSQL's catalogs.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    latest = check_migrations(migrations)
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,))
    row = await cur.fetchone()
    if not (row and row[0]):
        log.info("store.migration_lock_wait")
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute(_SCHEMA_VERSION_DDL)
        version = await current_version(conn)
        refuse_newer(version, latest)
        for target, sql in migrations:
            if target <= version:
                continue
            async with conn.transaction():
                # No parameters: psycopg sends the script as one simple query, which may hold
                # several statements (and dollar-quoted function bodies).
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                    (target, datetime.now(UTC)),
                )
            log.info("schema migrated", version=target, backend="postgres")
            version = target
        return version
    finally:
        if not conn.closed:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
