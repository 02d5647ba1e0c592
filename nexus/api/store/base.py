"""The REST API's persistence contract: the :class:`Store` protocol, its models and errors.

Handlers talk to :class:`Store` only. Two backends implement it: :class:`~.sqlite.SqliteStore`
(one file, one replica: the embedded default) and :class:`~.postgres.PostgresStore` (one
database shared by several replicas).

Conventions shared by every method of every backend:

* Timestamps are timezone-aware UTC :class:`~datetime.datetime` values with microsecond
  precision. SQLite keeps them as fixed-width ISO-8601 strings (``2024-05-01T12:00:00.000000Z``,
  so that string comparison in SQL is chronological comparison), PostgreSQL as ``timestamptz``.
* Database failures surface as :class:`StoreError` (a handler answers 503); conflicts and
  missing rows have their own subclasses. Text that a backend cannot store (a lone surrogate
  from JSON ``"\\ud800"``, which has no UTF-8 form, or a NUL character, which PostgreSQL text
  cannot hold) raises :class:`ValueError` (a handler answers 400) on both backends alike, so
  that data never depends on which backend took it.
* Secrets never reach the store: API keys and refresh tokens arrive as SHA-256 hex digests.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from nexus.api.ratelimit import RateLimiter

__all__ = [
    "LAST_USED_RESOLUTION",
    "ApiKey",
    "ConstraintViolation",
    "CredentialSink",
    "EmailTaken",
    "NotFound",
    "RefreshToken",
    "Store",
    "StoreError",
    "Tenant",
    "User",
    "check_text",
    "cr_name_for",
    "format_ts",
    "new_tenant_id",
    "new_user_id",
    "normalize_email",
    "parse_ts",
    "round_ts",
    "utcnow",
]

log = structlog.get_logger("nexus.api.store")

#: ``lookup_api_key`` refreshes ``last_used_at`` at most this often per key, so that a busy key
#: does not turn every authenticated read into a durable (fsync'd) write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# Random ids can collide in theory; a handful of retries turns "in theory" into "never".
_ID_ATTEMPTS = 5


class StoreError(Exception):
    """The store could not complete an operation (database unavailable, corrupt, closed)."""


class EmailTaken(StoreError):
    """Another user already registered this email (compared case-insensitively)."""


class NotFound(StoreError):
    """A row the operation depends on does not exist (or its tenant is deleted)."""


class ConstraintViolation(StoreError):
    """A write broke a constraint; the methods that expect one turn it into a precise error.

    ``constraint`` names it where the backend says (PostgreSQL); SQLite puts the columns in
    the message instead.
    """

    def __init__(self, message: str, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


@dataclass(frozen=True, slots=True)
class User:
    """A registered account. ``email`` is as typed at registration."""

    id: str
    email: str
    display_name: str
    # Kept out of repr so that logging a User never prints the hash.
    password_hash: str = field(repr=False)
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant; ``cr_name`` names both its NexusTenant CR and its namespace."""

    id: str
    cr_name: str
    display_name: str
    node_profile: str
    created_at: datetime
    deleted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A tenant-scoped API key, known only by the SHA-256 hex digest of the raw key."""

    hash: str
    tenant_id: str
    label: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A stored refresh token (by hash). Rotation chains tokens of one login in a family."""

    hash: str
    user_id: str
    family_id: str
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None = None
    replaced_by: str | None = None

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and now < self.expires_at


class Store(Protocol):
    """The repository the REST handlers use. Every method is a single atomic operation."""

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the store can serve reads (readiness)."""
        ...

    async def close(self) -> None: ...

    async def create_user(self, email: str, display_name: str, password_hash: str) -> User:
        """Insert a user; :class:`EmailTaken` if the email exists in any letter case."""
        ...

    async def get_user_by_email(self, email: str) -> User | None: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def create_tenant(
        self, owner_user_id: str, display_name: str, node_profile: str
    ) -> Tenant:
        """Insert a tenant and its owner link together; :class:`NotFound` if no such user."""
        ...

    async def delete_tenant(self, tenant_id: str) -> bool:
        """Mark the tenant deleted and revoke its keys; False if unknown or already deleted."""
        ...

    async def purge_tenant(self, tenant_id: str) -> bool:
        """Remove the tenant and everything it owns; False if unknown."""
        ...

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant unless it is unknown or deleted."""
        ...

    async def list_user_tenants(self, user_id: str) -> list[Tenant]: ...

    async def user_owns_tenant(self, user_id: str, tenant_id: str) -> bool: ...

    async def create_api_key(self, tenant_id: str, key_hash: str, label: str) -> ApiKey:
        """Store a key hash; :class:`NotFound` if the tenant is unknown or deleted."""
        ...

    async def list_api_keys(self, tenant_id: str) -> list[ApiKey]:
        """The tenant's keys that are not revoked, oldest first."""
        ...

    async def revoke_api_key(self, tenant_id: str, key_hash: str) -> bool:
        """Revoke a key of *this* tenant; False if the hash is unknown here (or revoked)."""
        ...

    async def lookup_api_key(self, key_hash: str) -> ApiKey | None:
        """The key if it is live and its tenant is not deleted; records its use."""
        ...

    async def store_refresh_token(
        self, token_hash: str, user_id: str, family_id: str, expires_at: datetime
    ) -> RefreshToken: ...

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        """The token whatever its state (revoked and expired included), or None."""
        ...

    async def rotate_refresh_token(
        self, old_hash: str, new_hash: str, expires_at: datetime
    ) -> bool:
        """Replace a usable token by a new one in its family; False if it was not usable."""
        ...

    async def revoke_token_family(self, family_id: str) -> int:
        """Revoke every live token of the family; return how many were revoked."""
        ...

    async def delete_expired_refresh_tokens(self) -> int:
        """Drop tokens past their expiry (housekeeping); return how many."""
        ...

    async def watch_credentials(self, sink: CredentialSink) -> None:
        """Keep ``sink`` (a credential cache) in step with changes committed by other processes.

        A no-op where this process is the only writer (SQLite): the handlers that revoke
        invalidate the cache themselves.
        """
        ...

    def rate_limiter(self, limit: int, window: float) -> RateLimiter:
        """At most ``limit`` hits per key in any ``window`` seconds, counted across every
        process that shares this store (SQLite: this process)."""
        ...


class CredentialSink(Protocol):
    """What a store tells a credential cache (:class:`~nexus.api.credcache.CredentialCache`)."""

    def invalidate_key(self, key_hash: str) -> None: ...

    def invalidate_tenant(self, tenant_id: str) -> None: ...

    def invalidate_user(self, user_id: str) -> None: ...

    def invalidate_all(self) -> None: ...

    def trust_while(self, current: Callable[[], bool]) -> None:
        """Serve cached entries only while ``current()`` says every change is known."""
        ...


def normalize_email(email: str) -> str:
    """The form emails are compared in: lowercase. The address as typed is kept separately."""
    return email.lower()


def new_user_id() -> str:
    """``usr_`` + 16 random hex characters (64 bits)."""
    return "usr_" + secrets.token_hex(8)


def new_tenant_id() -> str:
    """``t_`` + 12 random lowercase hex characters, so ``cr_name_for`` yields a DNS label."""
    return "t_" + secrets.token_hex(6)


def cr_name_for(tenant_id: str) -> str:
    """The NexusTenant CR name (and namespace) of a tenant id: ``tenant-<hex>``."""
    return "tenant-" + tenant_id.removeprefix("t_")


def format_ts(ts: datetime) -> str:
    """A UTC timestamp in the store's fixed-width form; naive datetimes are refused."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(raw: str) -> datetime:
    return datetime.fromisoformat(raw).astimezone(UTC)


def round_ts(ts: datetime) -> datetime:
    """What a read returns for ``ts``: UTC, microsecond precision."""
    return parse_ts(format_ts(ts))


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_text(*values: str) -> None:
    """ValueError unless every value can be stored as text by both backends."""
    for value in values:
        if "\x00" in value:
            raise ValueError("text must not contain NUL characters")
        value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
