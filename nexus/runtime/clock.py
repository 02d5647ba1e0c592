"""Time sources for the work queue and rate limiters (client-go's ``k8s.io/utils/clock``).

Everything that waits is written against :class:`Clock` so that tests can drive time by hand
with :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Cancellable", "Clock", "FakeClock", "RealClock"]


class Cancellable(Protocol):
    """A scheduled callback that can be called off (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """A monotonic time source that can schedule callbacks.

    ``now()`` never goes backwards. ``call_at(when, cb)`` runs ``cb`` once, on the event loop's
    thread, no earlier than ``when`` as seen by ``now()`` (give or take the loop's clock
    resolution), unless it is cancelled first.
    """

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable: ...


class RealClock:
    """The running event loop's clock.

    The loop is looked up on every call rather than captured at construction, so a RealClock
    (and anything holding one) can be created before the loop starts and survives across
    loops, as pytest's per-session loop or ``asyncio.run`` called twice would otherwise break.
    ``now()`` outside a running loop falls back to ``time.monotonic()``, which is what the
    default asyncio loop's ``time()`` returns; ``call_at`` needs a running loop.
    """

    __slots__ = ()

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)


class _FakeTimer:
    """A FakeClock callback; cancelling marks it so ``advance`` skips it (lazy deletion)."""

    __slots__ = ("_clock", "callback", "finished", "when")

    def __init__(self, clock: FakeClock, when: float, callback: Callable[[], None]) -> None:
        self._clock = clock
        self.when = when
        self.callback = callback
        # Set once the timer has run or been cancelled, so neither happens twice.
        self.finished = False

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self._clock._cancelled()


class FakeClock:
    """A clock that only moves when told to, for deterministic tests.

    Guarantees: ``now()`` returns exactly the time last set (it starts at ``start``);
    callbacks run synchronously inside :meth:`advance` / :meth:`set`, in order of their due
    time (ties in scheduling order), with ``now()`` equal to their due time while they run;
    a callback scheduled by another callback runs in the same ``advance`` if it is due by
    the target time. Callbacks due at or before the current time wait for the next
    ``advance`` (``advance(0)`` runs them), as asyncio runs them on the next loop iteration.
    Time never goes backwards: negative advances raise ``ValueError``.
    """

    __slots__ = ("_heap", "_live", "_now", "_seq")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._seq = 0
        self._live = 0

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _FakeTimer:
        timer = _FakeTimer(self, when, callback)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        self._live += 1
        return timer

    def _cancelled(self) -> None:
        self._live -= 1
        heap = self._heap
        # Cancelled entries are skipped lazily; rebuild once they dominate so a test that
        # keeps rescheduling a far-off timer does not grow the heap without bound.
        if len(heap) > 2 * self._live + 16:
            self._heap = [e for e in heap if not e[2].finished]
            heapq.heapify(self._heap)

    @property
    def pending(self) -> int:
        """Number of scheduled callbacks that are neither run nor cancelled."""
        return self._live

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running every callback that falls due."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds} s)")
        self.set(self._now + seconds)

    def set(self, t: float) -> None:
        """Move time forward to ``t``, running every callback that falls due."""
        if t < self._now:
            raise ValueError(f"cannot move a clock backwards (from {self._now} to {t})")
        # Re-read self._heap each round: a callback's cancel() may have rebuilt it.
        while self._heap and self._heap[0][0] <= t:
            when, _, timer = heapq.heappop(self._heap)
            if timer.finished:
                continue
            timer.finished = True
            self._live -= 1
            self._now = max(self._now, when)
            timer.callback()
        self._now = t
        if not self._live:
            # Only cancelled entries can remain; drop them so long tests do not accumulate.
            self._heap.clear()
