"""A short-lived, in-process cache of resolved credentials.

Two sequential SQLite reads per API-key request (key, then tenant) dominated the cost of a
simple read. Entries live ``ttl`` seconds. Revoking a key and deleting a tenant go through this
process (the store has a single writer) and invalidate at once, so a revoked key is refused on
the very next request; the TTL only bounds staleness for changes made behind the API's back
(a restored database file).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from nexus.api.store import ApiKey, Tenant, User


class CredentialCache:
    """API key hash -> (key, tenant), and user id -> user, each for ``ttl`` seconds."""

    def __init__(
        self,
        ttl: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._keys: OrderedDict[str, tuple[float, ApiKey, Tenant]] = OrderedDict()
        self._users: OrderedDict[str, tuple[float, User]] = OrderedDict()

    def key(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        hit = self._keys.get(key_hash)
        if hit is None:
            return None
        expires, key, tenant = hit
        if self._clock() >= expires:
            del self._keys[key_hash]
            return None
        return key, tenant

    def put_key(self, key: ApiKey, tenant: Tenant) -> None:
        self._keys[key.hash] = (self._clock() + self.ttl, key, tenant)
        self._keys.move_to_end(key.hash)
        while len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)

    def user(self, user_id: str) -> User | None:
        hit = self._users.get(user_id)
        if hit is None:
            return None
        if self._clock() >= hit[0]:
            del self._users[user_id]
            return None
        return hit[1]

    def put_user(self, user: User) -> None:
        self._users[user.id] = (self._clock() + self.ttl, user)
        self._users.move_to_end(user.id)
        while len(self._users) > self.max_entries:
            self._users.popitem(last=False)

    def invalidate_key(self, key_hash: str) -> None:
        self._keys.pop(key_hash, None)

    def invalidate_tenant(self, tenant_id: str) -> None:
        for key_hash in [h for h, (_, _, t) in self._keys.items() if t.id == tenant_id]:
            del self._keys[key_hash]

    def __len__(self) -> int:
        return len(self._keys) + len(self._users)
