"""Clocks: FakeClock's deterministic firing order and RealClock's link to the event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from nexus.runtime.clock import Clock, FakeClock, RealClock

from ..support.protocols import implementation_problems, protocol_members


def test_fake_clock_reads_and_sets_time() -> None:
    clock = FakeClock(10.0)
    assert clock.now() == 10.0
    clock.advance(2.5)
    assert clock.now() == 12.5
    clock.set(20.0)
    assert clock.now() == 20.0


def test_fake_clock_refuses_to_go_backwards() -> None:
    clock = FakeClock(5.0)
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(4.0)
    assert clock.now() == 5.0


def test_fake_clock_fires_due_callbacks_in_time_order_at_their_time() -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []
    clock.call_at(3.0, lambda: fired.append(("c", clock.now())))
    clock.call_at(1.0, lambda: fired.append(("a", clock.now())))
    clock.call_at(2.0, lambda: fired.append(("b", clock.now())))
    clock.call_at(9.0, lambda: fired.append(("late", clock.now())))
    clock.advance(5.0)
    assert fired == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert clock.now() == 5.0
    assert clock.pending == 1


def test_fake_clock_ties_fire_in_scheduling_order() -> None:
    clock = FakeClock()
    fired: list[int] = []
    for i in range(5):
        clock.call_at(1.0, lambda i=i: fired.append(i))
    clock.advance(1.0)
    assert fired == [0, 1, 2, 3, 4]


def test_fake_clock_runs_callbacks_scheduled_during_advance_when_due() -> None:
    clock = FakeClock()
    fired: list[float] = []

    def chain() -> None:
        fired.append(clock.now())
        if len(fired) < 10:
            clock.call_at(clock.now() + 1.0, chain)

    clock.call_at(1.0, chain)
    clock.advance(4.5)
    assert fired == [1.0, 2.0, 3.0, 4.0]
    clock.advance(100)
    assert fired == [float(t) for t in range(1, 11)]


def test_fake_clock_cancel_prevents_firing_and_is_idempotent() -> None:
    clock = FakeClock()
    fired: list[str] = []
    handle = clock.call_at(1.0, lambda: fired.append("x"))
    clock.call_at(1.0, lambda: fired.append("y"))
    handle.cancel()
    handle.cancel()
    assert clock.pending == 1
    clock.advance(2.0)
    assert fired == ["y"]
    assert clock.pending == 0


def test_fake_clock_cancel_after_firing_does_not_corrupt_pending() -> None:
    clock = FakeClock()
    handle = clock.call_at(1.0, lambda: None)
    clock.advance(1.0)
    handle.cancel()
    assert clock.pending == 0
    clock.call_at(2.0, lambda: None)
    assert clock.pending == 1


def test_fake_clock_past_deadlines_wait_for_the_next_advance() -> None:
    clock = FakeClock(10.0)
    fired: list[float] = []
    clock.call_at(3.0, lambda: fired.append(clock.now()))
    assert fired == []
    clock.advance(0)
    assert fired == [10.0]


def test_fake_clock_heap_does_not_grow_with_cancelled_timers() -> None:
    clock = FakeClock()
    clock.call_at(1e9, lambda: None)  # keeps one live timer so the heap is not just cleared
    for i in range(10_000):
        clock.call_at(1e6 + i, lambda: None).cancel()
    assert clock.pending == 1
    assert len(clock._heap) < 100


@pytest.mark.parametrize("clock", [FakeClock, RealClock])
def test_clocks_implement_the_protocol(clock: type) -> None:
    assert protocol_members(Clock) == ["call_at", "now"]
    assert implementation_problems(clock, Clock) == []


def test_real_clock_outside_a_loop_is_monotonic_time() -> None:
    before = time.monotonic()
    now = RealClock().now()
    assert before <= now <= time.monotonic()


async def test_real_clock_uses_the_running_loop() -> None:
    loop = asyncio.get_running_loop()
    clock = RealClock()
    assert abs(clock.now() - loop.time()) < 0.05
    fired = asyncio.Event()
    start = clock.now()
    handle = clock.call_at(start + 0.02, fired.set)
    assert isinstance(handle, asyncio.TimerHandle)
    await asyncio.wait_for(fired.wait(), 2.0)
    assert clock.now() - start >= 0.015


async def test_real_clock_cancel() -> None:
    clock = RealClock()
    fired: list[int] = []
    clock.call_at(clock.now() + 0.01, lambda: fired.append(1)).cancel()
    await asyncio.sleep(0.03)
    assert fired == []
