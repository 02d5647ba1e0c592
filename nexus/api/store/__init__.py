"""Persistence for the REST API: users, tenants, API keys and refresh tokens.

:func:`open_store` picks the backend from ``--database``: a ``postgresql://`` URL opens
:class:`PostgresStore` (several replicas on one database), anything else is the path of a
SQLite file (:class:`SqliteStore`, one replica). Both serve the same :class:`Store` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nexus.api.store.base import (
    LAST_USED_RESOLUTION,
    ApiKey,
    CredentialSink,
    EmailTaken,
    NotFound,
    RefreshToken,
    Store,
    StoreError,
    Tenant,
    User,
    cr_name_for,
    format_ts,
    new_tenant_id,
    new_user_id,
    normalize_email,
    parse_ts,
    utcnow,
)
from nexus.api.store.migrations import MigrationError
from nexus.api.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from nexus.api.store.postgres import PostgresStore, describe_url

#: Imported on first use: psycopg and its pool cost a SQLite deployment about 9 MB otherwise.
_POSTGRES_NAMES = frozenset({"PostgresStore", "describe_url"})


def __getattr__(name: str) -> Any:
    if name in _POSTGRES_NAMES:
        from nexus.api.store import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_postgres_url(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


__all__ = [
    "LAST_USED_RESOLUTION",
    "ApiKey",
    "CredentialSink",
    "EmailTaken",
    "MigrationError",
    "NotFound",
    "PostgresStore",
    "RefreshToken",
    "SqliteStore",
    "Store",
    "StoreError",
    "Tenant",
    "User",
    "cr_name_for",
    "describe_url",
    "format_ts",
    "is_postgres_url",
    "new_tenant_id",
    "new_user_id",
    "normalize_email",
    "open_store",
    "parse_ts",
]


async def open_store(database: str, *, clock: Callable[[], datetime] = utcnow) -> Store:
    """The store behind ``--database``: a ``postgresql://`` URL, or a SQLite file path."""
    if is_postgres_url(database):
        from nexus.api.store.postgres import PostgresStore

        return await PostgresStore.open(database, clock=clock)
    return await SqliteStore.open(database, clock=clock)
