"""Exponential backoff with jitter that forgives after a healthy period (client-go's reflector)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for reconnecting to a sick API server.

    Starts at ``initial`` and doubles up to ``cap``; each delay gets up to ``jitter`` x itself
    added at random so that many clients do not retry in lockstep. If no backoff was needed for
    ``reset_after`` seconds, the next failure starts from ``initial`` again. The defaults are
    client-go's reflector values (800 ms -> 30 s, x2, jitter 1.0, reset after 2 min).
    """

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    reset_after: float = 120.0
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random
    _current: float = field(default=0.0, init=False)
    _last: float | None = field(default=None, init=False)

    def next_delay(self) -> float:
        now = self.clock()
        if self._last is None or now - self._last > self.reset_after:
            self._current = self.initial
        else:
            self._current = min(self._current * self.factor, self.cap)
        self._last = now
        return self._current * (1.0 + self.jitter * self.rand())

    def reset(self) -> None:
        self._last = None
