"""Retry delays for work-queue items (client-go's ``util/workqueue`` rate limiters).

A rate limiter answers "how long must this item wait before it is retried?". Calling
:meth:`RateLimiter.when` records a failure; :meth:`RateLimiter.forget` is called once the item
succeeds so that its next failure starts from the shortest delay again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from nexus.runtime.clock import Clock

__all__ = [
    "BucketRateLimiter",
    "ItemExponentialFailureRateLimiter",
    "MaxOfRateLimiter",
    "RateLimiter",
    "default_controller_rate_limiter",
]


class RateLimiter[T: Hashable](Protocol):
    """Decides retry delays per item.

    ``when(item)`` returns the delay in seconds (>= 0) before ``item`` may be retried and counts
    one more failure for it; ``forget(item)`` drops the item's history (it must not be kept
    once forgotten, so per-item state stays bounded by the items currently failing);
    ``num_requeues(item)`` is the number of failures recorded since the last ``forget``.
    """

    def when(self, item: T) -> float: ...

    def forget(self, item: T) -> None: ...

    def num_requeues(self, item: T) -> int: ...


# Beyond this many doublings any positive base delay exceeds every finite cap; stopping here
# keeps 2.0 ** exp from raising OverflowError after ~1024 failures.
_MAX_EXPONENT = 1023


class ItemExponentialFailureRateLimiter[T: Hashable]:
    """Per-item exponential backoff: ``base_delay * 2 ** failures``, capped at ``max_delay``.

    Guarantees: the n-th consecutive failure of an item (n from 0) waits
    ``min(base_delay * 2**n, max_delay)`` regardless of other items; any failure count, however
    large, yields a finite delay; ``forget`` removes the item's entry, so ``len()`` is the
    number of items with a failure recorded since their last ``forget``.
    """

    __slots__ = ("_failures", "base_delay", "max_delay")

    def __init__(self, base_delay: float = 0.005, max_delay: float = 1000.0) -> None:
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must be >= 0")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[T, int] = {}

    def when(self, item: T) -> float:
        exp = self._failures.get(item, 0)
        self._failures[item] = exp + 1
        if exp > _MAX_EXPONENT:
            return self.max_delay
        # A huge base can still overflow to inf here; min() turns that into the cap.
        return min(self.base_delay * 2.0**exp, self.max_delay)

    def forget(self, item: T) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: T) -> int:
        return self._failures.get(item, 0)

    def __len__(self) -> int:
        return len(self._failures)

    def __bool__(self) -> bool:
        # Without this an idle limiter (len 0) is falsy and `limiter or default` would
        # silently replace it.
        return True


class BucketRateLimiter[T: Hashable]:
    """An overall token bucket shared by all items (``golang.org/x/time/rate``).

    Guarantees: the bucket holds at most ``burst`` tokens and refills at ``qps`` per second;
    each ``when`` reserves one token, returning 0 while tokens remain and otherwise the time
    until its reserved token is refilled, so back-to-back calls on an empty bucket return
    delays spaced exactly ``1/qps`` apart (reservations are never given back). It keeps no
    per-item state: ``forget`` does nothing and ``num_requeues`` is always 0.

    Time comes from ``clock.now`` if a clock is given, else ``time.monotonic``; no event loop
    is needed to construct or use it.
    """

    __slots__ = ("_last", "_now", "_tokens", "burst", "qps")

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock | None = None) -> None:
        if not qps > 0:
            raise ValueError("qps must be > 0")
        if burst < 0:
            raise ValueError("burst must be >= 0")
        self.qps = qps
        self.burst = burst
        self._now: Callable[[], float] = clock.now if clock is not None else time.monotonic
        self._tokens = float(burst)
        self._last: float | None = None

    def when(self, item: T) -> float:
        if math.isinf(self.qps):
            return 0.0
        now = self._now()
        last = self._last
        tokens = self._tokens
        # The bucket starts full at its first use, not at construction (no clock is read
        # before then). `last` never moves backwards, so no interval is refilled twice.
        if last is None:
            self._last = now
        elif now > last:
            tokens = min(float(self.burst), tokens + (now - last) * self.qps)
            self._last = now
        tokens -= 1.0
        self._tokens = tokens
        return -tokens / self.qps if tokens < 0 else 0.0

    def forget(self, item: T) -> None:
        pass

    def num_requeues(self, item: T) -> int:
        return 0


class MaxOfRateLimiter[T: Hashable]:
    """Combines limiters: the delay is the longest any of them asks for.

    Guarantees: every ``when`` call reaches every limiter (so each records the failure);
    ``forget`` forgets in all of them; ``num_requeues`` is the largest count among them;
    ``len()`` is the total per-item entries held by the limiters that expose ``len()``.
    """

    __slots__ = ("limiters",)

    def __init__(self, *limiters: RateLimiter[T]) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self.limiters: tuple[RateLimiter[T], ...] = limiters

    def when(self, item: T) -> float:
        return max([limiter.when(item) for limiter in self.limiters])

    def forget(self, item: T) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)

    def __len__(self) -> int:
        total = 0
        for limiter in self.limiters:
            size = getattr(limiter, "__len__", None)
            if size is not None:
                total += size()
        return total

    def __bool__(self) -> bool:
        # See ItemExponentialFailureRateLimiter.__bool__.
        return True


def default_controller_rate_limiter(clock: Clock | None = None) -> RateLimiter[Any]:
    """controller-runtime's default: per-item 5 ms -> 1000 s backoff, overall 10 qps, burst 100.

    A failing item waits for whichever is longer: its own backoff or its turn in the shared
    bucket, so a burst of failures across many items cannot exceed 10 retries/s for long.
    """
    return MaxOfRateLimiter[Any](
        ItemExponentialFailureRateLimiter(0.005, 1000.0),
        BucketRateLimiter(10.0, 100, clock),
    )
