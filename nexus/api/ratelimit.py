"""Sliding-window rate limiting for ``/auth/*``.

Each of login, register and refresh runs a cost-12 bcrypt check or mints tokens; without a limit
a single client can burn every CPU of the API. The handlers keep one limiter per client address
and one per account (normalised email) and answer 429 with ``Retry-After`` when either says no.

Handlers see the :class:`RateLimiter` protocol; the store hands out the implementation, so that
replicas sharing a PostgreSQL store share their counts, and a SQLite store (one replica) counts
in this process with :class:`SlidingWindowLimiter`.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["InProcessLimiter", "RateLimiter", "SlidingWindowLimiter"]


class RateLimiter(Protocol):
    """At most ``limit`` hits per key within any ``window`` seconds."""

    limit: int
    window: float

    async def hit(self, key: str) -> float | None:
        """Record a hit for ``key``: None if allowed, else seconds until one would be allowed.

        A refused hit is not recorded.
        """
        ...


class SlidingWindowLimiter:
    """At most ``limit`` hits per key within any ``window`` seconds (an exact sliding log).

    Memory is bounded: keys whose hits have all left the window are dropped as they age, and
    beyond ``max_keys`` live keys the least recently hit one is forgotten, which can only make
    the limiter more lenient for that key, never block a key that has not hit it. The worst
    case is ``max_keys * limit`` timestamps. Not thread-safe; meant for one event loop, where
    ``hit`` runs without yielding.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = 100_000,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        # Ordered by each key's most recent recorded hit, oldest first, so the front is where
        # expired keys and eviction candidates are.
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hits)

    def hit(self, key: str) -> float | None:
        """Record a hit for ``key``: None if allowed, else seconds until one would be allowed.

        A refused hit is not recorded, so a client that waits the returned time gets through
        however often it was refused meanwhile.
        """
        now = self._clock()
        horizon = now - self.window
        self._drop_expired(horizon)
        hits = self._hits.get(key)
        if hits is None:
            hits = deque()
        else:
            while hits and hits[0] <= horizon:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(hits[0] - horizon, 0.0)
        hits.append(now)
        self._hits[key] = hits
        self._hits.move_to_end(key)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        return None

    def reset(self, key: str) -> None:
        """Forget ``key``'s hits."""
        self._hits.pop(key, None)

    def _drop_expired(self, horizon: float) -> None:
        # Amortised O(1): each key is removed once, and the scan stops at the first live key.
        while self._hits:
            key, hits = next(iter(self._hits.items()))
            if hits and hits[-1] > horizon:
                return
            del self._hits[key]


class InProcessLimiter:
    """:class:`RateLimiter` over a :class:`SlidingWindowLimiter`: the counts of this process."""

    def __init__(self, limiter: SlidingWindowLimiter) -> None:
        self.limiter = limiter
        self.limit = limiter.limit
        self.window = limiter.window

    async def hit(self, key: str) -> float | None:
        return self.limiter.hit(key)
