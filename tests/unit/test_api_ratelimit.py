"""SlidingWindowLimiter: exact sliding window, Retry-After values, bounded memory."""

from __future__ import annotations

import math

import pytest

from nexus.api.ratelimit import SlidingWindowLimiter


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_allows_the_limit_then_says_how_long_to_wait() -> None:
    clock = Clock()
    rl = SlidingWindowLimiter(3, 60.0, clock)
    assert [rl.hit("ip") for _ in range(3)] == [None, None, None]
    clock.t += 10
    assert rl.hit("ip") == pytest.approx(50.0)
    clock.t += 49.5
    assert rl.hit("ip") == pytest.approx(0.5)
    assert math.ceil(rl.hit("ip") or 0) == 1  # what the handler puts in Retry-After
    clock.t += 0.5
    assert rl.hit("ip") is None  # the first three hits left the window together
    assert rl.hit("ip") is None
    assert rl.hit("ip") is None
    assert rl.hit("ip") == pytest.approx(60.0)


def test_window_slides_rather_than_resetting() -> None:
    clock = Clock(0.0)
    rl = SlidingWindowLimiter(3, 10.0, clock)
    for t in (0.0, 5.0, 9.0):
        clock.t = t
        assert rl.hit("k") is None
    clock.t = 10.5  # the hit at 0 expired; those at 5 and 9 still count
    assert rl.hit("k") is None
    clock.t = 10.6
    assert rl.hit("k") == pytest.approx(4.4)  # until the hit at 5 expires
    clock.t = 15.0  # exactly window after the hit at 5: it no longer counts
    assert rl.hit("k") is None


def test_refused_hits_are_not_recorded() -> None:
    clock = Clock()
    rl = SlidingWindowLimiter(1, 10.0, clock)
    assert rl.hit("k") is None
    for i in range(1, 100):
        clock.t = 1000.0 + i * 0.1
        assert rl.hit("k") == pytest.approx(10.0 - i * 0.1)
    clock.t = 1010.0
    assert rl.hit("k") is None  # waited the announced time: through, despite the hammering


def test_keys_are_independent() -> None:
    rl = SlidingWindowLimiter(2, 60.0, Clock())
    assert rl.hit("1.2.3.4") is None
    assert rl.hit("1.2.3.4") is None
    assert rl.hit("1.2.3.4") is not None
    assert rl.hit("5.6.7.8") is None
    assert rl.hit("alice@example.com") is None


def test_reset_forgets_a_key() -> None:
    rl = SlidingWindowLimiter(1, 60.0, Clock())
    rl.hit("k")
    assert rl.hit("k") is not None
    rl.reset("k")
    rl.reset("never-seen")
    assert rl.hit("k") is None


def test_expired_keys_are_dropped() -> None:
    clock = Clock()
    rl = SlidingWindowLimiter(5, 10.0, clock)
    for i in range(1000):
        rl.hit(f"addr-{i}")
    assert len(rl) == 1000
    clock.t += 10.0
    rl.hit("new")
    assert len(rl) == 1


def test_memory_is_capped_by_evicting_the_least_recently_hit() -> None:
    clock = Clock()
    rl = SlidingWindowLimiter(1, 3600.0, clock, max_keys=100)
    rl.hit("victim")
    for i in range(99):
        clock.t += 0.001
        rl.hit(f"k{i}")
    assert len(rl) == 100
    clock.t += 0.001
    assert rl.hit("victim") is not None  # refused: does not refresh its place in line
    rl.hit("one-more")
    assert len(rl) == 100
    assert rl.hit("victim") is None  # it was evicted, the oldest entry
    assert rl.hit("k98") is not None  # recent keys are still limited
    for i in range(10_000):
        rl.hit(f"flood-{i}")
    assert len(rl) == 100


def test_parameters_are_validated() -> None:
    for limit, window, max_keys in ((0, 1.0, 10), (1, 0.0, 10), (1, -1.0, 10), (1, 1.0, 0)):
        with pytest.raises(ValueError):
            SlidingWindowLimiter(limit, window, max_keys=max_keys)


def test_default_clock_is_monotonic_time() -> None:
    rl = SlidingWindowLimiter(1, 30.0)
    assert rl.hit("k") is None
    wait = rl.hit("k")
    assert wait is not None and 29.0 < wait <= 30.0
