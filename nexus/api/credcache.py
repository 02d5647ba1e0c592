"""A short-lived, in-process cache of resolved credentials.

Two sequential database reads per API-key request (key, then tenant) dominated the cost of a
simple read. Entries live ``ttl`` seconds. Revoking a key or deleting a tenant invalidates at
once: in this process the handler does it, and with a shared (PostgreSQL) store every replica
hears of every change from the store (:meth:`~nexus.api.store.Store.watch_credentials`), which
also closes the cache (:meth:`trust_while`) whenever it cannot vouch that it has heard of every
change. The TTL only bounds staleness for what no one reports (a restored SQLite file).

A lookup that races an invalidation must not put back what was just invalidated: callers take
:attr:`generation` before reading the store and pass it to ``put_*``, which drops the entry if
anything was invalidated in between.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from nexus.api.store import ApiKey, Tenant, User


def _always() -> bool:
    return True


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
        self._current: Callable[[], bool] = _always
        #: Bumped by every invalidation; see the module docstring.
        self.generation = 0

    def trust_while(self, current: Callable[[], bool]) -> None:
        """Serve entries only while ``current()`` is true (the store's change feed is live)."""
        self._current = current

    def key(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        hit = self._keys.get(key_hash)
        if hit is None or not self._current():
            return None
        expires, key, tenant = hit
        if self._clock() >= expires:
            del self._keys[key_hash]
            return None
        return key, tenant

    def put_key(self, key: ApiKey, tenant: Tenant, since: int | None = None) -> None:
        """Cache a resolved key, unless an invalidation happened after ``since`` (a generation)."""
        if since is not None and since != self.generation:
            return
        self._keys[key.hash] = (self._clock() + self.ttl, key, tenant)
        self._keys.move_to_end(key.hash)
        while len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)

    def user(self, user_id: str) -> User | None:
        hit = self._users.get(user_id)
        if hit is None or not self._current():
            return None
        if self._clock() >= hit[0]:
            del self._users[user_id]
            return None
        return hit[1]

    def put_user(self, user: User, since: int | None = None) -> None:
        """Cache a user, unless an invalidation happened after ``since`` (a generation)."""
        if since is not None and since != self.generation:
            return
        self._users[user.id] = (self._clock() + self.ttl, user)
        self._users.move_to_end(user.id)
        while len(self._users) > self.max_entries:
            self._users.popitem(last=False)

    def invalidate_key(self, key_hash: str) -> None:
        self.generation += 1
        self._keys.pop(key_hash, None)

    def invalidate_tenant(self, tenant_id: str) -> None:
        self.generation += 1
        for key_hash in [h for h, (_, _, t) in self._keys.items() if t.id == tenant_id]:
            del self._keys[key_hash]

    def invalidate_user(self, user_id: str) -> None:
        self.generation += 1
        self._users.pop(user_id, None)

    def invalidate_all(self) -> None:
        self.generation += 1
        self._keys.clear()
        self._users.clear()

    def __len__(self) -> int:
        return len(self._keys) + len(self._users)
