"""WorkQueue: deduplication, exclusivity, delays, priorities, starvation, shutdown, metrics."""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import random
import uuid
import weakref

import pytest
from prometheus_client import REGISTRY

from nexus.runtime.clock import FakeClock
from nexus.runtime.ratelimiter import ItemExponentialFailureRateLimiter, RateLimiter
from nexus.runtime.workqueue import LOW_PRIORITY, NORMAL_PRIORITY, QueueShutDown, WorkQueue


def make(clock: FakeClock | None = None, **kwargs: object) -> WorkQueue[str]:
    kwargs.setdefault("metrics", False)
    return WorkQueue("", clock=clock or FakeClock(), **kwargs)  # type: ignore[arg-type]


def drain(q: WorkQueue[str]) -> list[str]:
    """Get and finish everything that is ready now, in order."""
    out = []
    while len(q):
        item = q.get_nowait()
        out.append(item)
        q.done(item)
    return out


def assert_empty(q: WorkQueue[str], clock: FakeClock | None = None) -> None:
    assert q.sizes() == {
        "ready": 0, "dirty": 0, "processing": 0, "waiting": 0, "rate_limited": 0,
    }  # fmt: skip
    assert q._heap == []
    assert q._levels == {}
    assert q._order == []
    assert not q._waiters
    assert q._timer is None
    if clock is not None:
        assert clock.pending == 0


async def settle() -> None:
    """Let tasks woken by the queue run."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- deduplication and exclusivity ---------------------------------------------------------
def test_add_deduplicates_waiting_items() -> None:
    q = make()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get_nowait() == "a"
    assert q.get_nowait() == "b"
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


def test_item_added_while_processing_is_requeued_only_after_done() -> None:
    q = make()
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    assert q.sizes()["dirty"] == 1
    assert q.sizes()["processing"] == 1
    q.done("a")
    assert len(q) == 1
    assert q.get_nowait() == "a"
    q.done("a")
    assert len(q) == 0  # the two adds during processing caused exactly one more round


def test_done_without_intervening_add_does_not_requeue() -> None:
    q = make()
    q.add("a")
    q.done(q.get_nowait())
    q.done("a")  # a second done is ignored
    q.done("never-added")
    assert_empty(q)


async def test_waiting_worker_never_gets_an_item_another_worker_holds() -> None:
    q = make()
    q.add("a")
    held = await q.get()
    waiter = asyncio.create_task(q.get())
    await settle()
    q.add("a")
    await settle()
    assert not waiter.done()
    q.done(held)
    assert await asyncio.wait_for(waiter, 1) == "a"
    q.done("a")


# -- delays ------------------------------------------------------------------------------
def test_add_after_earliest_ready_time_wins() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add_after("a", 10.0)
    q.add_after("a", 5.0)
    q.add_after("a", 7.0)
    assert q.sizes()["waiting"] == 1
    clock.advance(4.9)
    assert len(q) == 0
    clock.advance(0.1)
    assert drain(q) == ["a"]
    clock.advance(10.0)  # the superseded 10 s and 7 s requests must not fire again
    assert len(q) == 0
    assert_empty(q, clock)


def test_add_after_later_request_does_not_postpone() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add_after("a", 1.0)
    q.add_after("a", 100.0)
    clock.advance(1.0)
    assert drain(q) == ["a"]
    assert_empty(q, clock)


def test_delays_use_a_single_timer_for_the_earliest_deadline() -> None:
    clock = FakeClock()
    q = make(clock)
    order = list(range(50))
    random.Random(7).shuffle(order)
    for i in order:
        q.add_after(f"k{i:02}", 1.0 + i)
        assert clock.pending == 1
    clock.advance(0.5)
    q.add_after("early", 0.1)  # earlier than every deadline: the timer is moved, not doubled
    assert clock.pending == 1
    clock.advance(0.1)
    assert drain(q) == ["early"]
    clock.advance(100)
    assert drain(q) == [f"k{i:02}" for i in range(50)]  # in deadline order
    assert_empty(q, clock)


def test_immediate_add_overrides_a_pending_delay() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add_after("a", 10.0)
    q.add("a")
    assert len(q) == 1
    assert q.sizes()["waiting"] == 0
    assert clock.pending == 0  # nothing else was delayed, so the timer is gone
    assert drain(q) == ["a"]
    clock.advance(20.0)
    assert len(q) == 0
    assert_empty(q, clock)


def test_add_after_of_a_ready_item_is_a_no_op() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add("a")
    q.add_after("a", 1.0)
    assert q.sizes()["waiting"] == 0
    assert drain(q) == ["a"]
    clock.advance(2.0)
    assert len(q) == 0


def test_add_after_while_processing_requeues_after_done() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add("a")
    assert q.get_nowait() == "a"
    q.add_after("a", 1.0)
    clock.advance(1.0)
    assert len(q) == 0  # still held
    q.done("a")
    assert drain(q) == ["a"]
    assert_empty(q, clock)


def test_add_after_non_positive_delay_adds_now() -> None:
    q = make()
    q.add_after("a", 0)
    q.add_after("b", -1)
    assert drain(q) == ["a", "b"]


def test_rate_limited_add_uses_the_limiter_and_forget_resets() -> None:
    clock = FakeClock()
    limiter: RateLimiter[str] = ItemExponentialFailureRateLimiter(1.0, 60.0)
    q = WorkQueue[str](clock=clock, rate_limiter=limiter, metrics=False)
    q.add_rate_limited("a")
    q.add_rate_limited("a")  # second failure (2 s) does not postpone the first (1 s)
    assert q.num_requeues("a") == 2
    clock.advance(0.99)
    assert len(q) == 0
    clock.advance(0.01)
    assert drain(q) == ["a"]
    q.add_rate_limited("a")  # third failure: 4 s
    clock.advance(3.99)
    assert len(q) == 0
    clock.advance(0.01)
    assert drain(q) == ["a"]
    assert q.sizes()["rate_limited"] == 1
    q.forget("a")
    assert q.num_requeues("a") == 0
    assert q.sizes()["rate_limited"] == 0
    q.add_rate_limited("a")
    clock.advance(1.0)
    assert drain(q) == ["a"]


def test_default_rate_limiter_uses_the_queue_clock() -> None:
    clock = FakeClock()
    q = WorkQueue[str](clock=clock, metrics=False)
    q.add_rate_limited("a")
    clock.advance(0.004)
    assert len(q) == 0
    clock.advance(0.001)
    assert drain(q) == ["a"]


# -- priorities --------------------------------------------------------------------------
def test_higher_priority_first_fifo_within_a_priority() -> None:
    q = make()
    q.add("n1")
    q.add("l1", priority=LOW_PRIORITY)
    q.add("h1", priority=10)
    q.add("n2", priority=NORMAL_PRIORITY)
    q.add("l2", priority=LOW_PRIORITY)
    q.add("h2", priority=10)
    assert drain(q) == ["h1", "h2", "n1", "n2", "l1", "l2"]


def test_readding_with_higher_priority_raises_it_once() -> None:
    q = make()
    q.add("a", priority=LOW_PRIORITY)
    q.add("b", priority=LOW_PRIORITY)
    q.add("c")
    q.add("b")  # raised to normal: joins the back of the normal FIFO
    assert len(q) == 3
    assert drain(q) == ["c", "b", "a"]
    assert len(q) == 0  # the stale low-priority entry of b is not handed out
    assert q.sizes()["dirty"] == 0


def test_stale_entry_of_a_raised_item_is_not_handed_out_while_it_is_held() -> None:
    q = make()
    q.add("a", priority=LOW_PRIORITY)
    q.add("b", priority=LOW_PRIORITY)
    q.add("a", priority=5)  # a's LOW entry is now stale, behind nothing in the LOW FIFO
    assert q.get_nowait() == "a"
    q.add("a")  # dirty again while held: must wait for done
    assert q.get_nowait() == "b"
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    q.done("a")
    assert q.get_nowait() == "a"


def test_readding_with_lower_priority_does_not_lower_it() -> None:
    q = make()
    q.add("a")
    q.add("b")
    q.add("a", priority=LOW_PRIORITY)
    assert drain(q) == ["a", "b"]


def test_priority_raised_while_processing_applies_when_requeued() -> None:
    q = make()
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a", priority=LOW_PRIORITY)
    q.add("b")
    q.add("a", priority=5)
    q.done("a")
    assert drain(q) == ["a", "b"]


def test_delayed_items_keep_their_priority() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add_after("low", 1.0, priority=LOW_PRIORITY)
    q.add_after("high", 2.0, priority=3)
    clock.advance(2.0)
    q.add("normal")
    assert drain(q) == ["high", "normal", "low"]


def test_delayed_priority_merges_with_immediate_add() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add("n")
    q.add_after("a", 5.0, priority=7)
    q.add("a", priority=LOW_PRIORITY)  # now, but at the higher of the two priorities
    assert drain(q) == ["a", "n"]


def test_starving_low_priority_item_is_served_under_continuous_traffic() -> None:
    clock = FakeClock()
    q = make(clock, starvation_after=5.0, starvation_every=4)
    q.add("initial-list", priority=LOW_PRIORITY)
    for i in range(3):
        q.add(f"event-{i}")
    served_at = None
    for step in range(1, 100):
        clock.advance(1.0)
        item = q.get_nowait()
        q.done(item)
        if item == "initial-list":
            served_at = step
            break
        q.add(f"event-{step + 2}")  # the normal-priority backlog never empties
    # Starved once ready > 5 s (t=6); then at most starvation_every + 1 gets.
    assert served_at is not None
    assert 6 <= served_at <= 10


def test_without_the_guard_the_same_traffic_starves_low_priority() -> None:
    # The control case for the test above: it shows that the traffic really starves.
    clock = FakeClock()
    q = make(clock, starvation_after=math.inf)
    q.add("initial-list", priority=LOW_PRIORITY)
    for i in range(3):
        q.add(f"event-{i}")
    for step in range(1, 100):
        clock.advance(1.0)
        item = q.get_nowait()
        assert item != "initial-list"
        q.done(item)
        q.add(f"event-{step + 2}")


def test_starvation_guard_serves_one_in_every_n_plus_one_and_oldest_first() -> None:
    clock = FakeClock()
    q = make(clock, starvation_after=5.0, starvation_every=4)
    for i in range(20):
        q.add(f"low-{i:02}", priority=LOW_PRIORITY)
    clock.advance(1.0)
    q.add("lowest", priority=-200)  # starved too, but less old than the LOW ones
    clock.advance(10.0)
    for i in range(100):
        q.add(f"event-{i:03}")
    got = []
    for _ in range(50):
        item = q.get_nowait()
        got.append(item)
        q.done(item)
    lows = [i for i, item in enumerate(got) if not item.startswith("event")]
    assert len(lows) == 10
    assert all(b - a == 5 for a, b in itertools.pairwise(lows))
    assert [got[i] for i in lows] == [f"low-{i:02}" for i in range(10)]
    # FIFO is kept among the normal items despite the interleaving.
    assert [g for g in got if g.startswith("event")] == [f"event-{i:03}" for i in range(40)]


def test_starvation_picks_the_oldest_across_lower_priorities() -> None:
    clock = FakeClock()
    q = make(clock, starvation_after=1.0, starvation_every=0)
    q.add("lowest-old", priority=-200)
    clock.advance(1.0)
    q.add("low-new", priority=LOW_PRIORITY)
    clock.advance(5.0)
    q.add("n")
    q.add("m")
    assert q.get_nowait() == "lowest-old"
    assert q.get_nowait() == "low-new"
    assert q.get_nowait() == "n"


# -- waiting and shutdown -----------------------------------------------------------------
async def test_get_blocks_until_another_task_adds() -> None:
    q = make()
    getter = asyncio.create_task(q.get())
    await settle()
    assert not getter.done()

    async def producer() -> None:
        await asyncio.sleep(0.01)
        q.add("a")

    await asyncio.create_task(producer())
    assert await asyncio.wait_for(getter, 1) == "a"
    assert q.sizes()["processing"] == 1
    q.done("a")


async def test_each_ready_item_wakes_exactly_one_waiter_in_fifo_order() -> None:
    q = make()
    waiters = [asyncio.create_task(q.get()) for _ in range(3)]
    await settle()
    q.add("a")
    await settle()
    assert [w.done() for w in waiters] == [True, False, False]
    q.add("b")
    q.add("c")
    results = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert results == ["a", "b", "c"]
    assert len(q) == 0


def test_get_returns_without_suspending_when_an_item_is_ready() -> None:
    q = make()
    q.add("a")
    coro = q.get()
    with pytest.raises(StopIteration) as stop:
        coro.send(None)  # a coroutine that finishes on its first step never suspended
    assert stop.value.value == "a"


async def test_cancelled_waiter_does_not_swallow_items() -> None:
    q = make()
    waiter = asyncio.create_task(q.get())
    await settle()
    waiter.cancel()
    await settle()
    q.add("a")
    assert len(q) == 1
    assert not q._waiters


async def test_item_handed_to_a_waiter_cancelled_before_it_ran_is_given_back() -> None:
    q = make()
    waiter = asyncio.create_task(q.get())
    await settle()
    q.add("a")  # handed straight to the waiter's future...
    waiter.cancel()  # ...which is cancelled before it can return it
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert q.sizes()["processing"] == 0
    assert q.get_nowait() == "a"
    q.done("a")
    assert_empty(q)


async def test_shutdown_wakes_waiters_and_get_raises() -> None:
    q = make()
    waiters = [asyncio.create_task(q.get()) for _ in range(2)]
    await settle()
    q.shutdown()
    for w in waiters:
        with pytest.raises(QueueShutDown):
            await asyncio.wait_for(w, 1)
    assert q.shutting_down


async def test_after_shutdown_queued_items_are_not_handed_out() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add("held")
    assert await q.get() == "held"
    q.add("queued")
    q.add("held")
    q.add_after("delayed", 1.0)
    q.shutdown()
    with pytest.raises(QueueShutDown):
        await q.get()
    with pytest.raises(QueueShutDown):
        q.get_nowait()
    q.add("late")  # ignored
    q.add_after("late", 1.0)
    clock.advance(5.0)
    assert len(q) == 0
    q.done("held")  # the worker finishes what it holds; nothing is requeued
    assert_empty(q, clock)


# -- leaks --------------------------------------------------------------------------------
def test_structures_shrink_back_to_zero_after_churn_of_10000_keys() -> None:
    clock = FakeClock()
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(0.01, 1.0)
    q = WorkQueue[str](clock=clock, rate_limiter=limiter, metrics=False)
    rng = random.Random(1)
    keys = [f"ns/obj-{i}" for i in range(10_000)]
    for i, key in enumerate(keys):
        q.add(key, priority=rng.choice((LOW_PRIORITY, NORMAL_PRIORITY)))
        if i % 3 == 0:
            q.add(key, priority=5)  # raise: leaves a stale entry behind
        if i % 5 == 0:
            q.add_after(keys[(i * 7) % len(keys)], rng.uniform(0.1, 3.0))
        if i % 7 == 0:
            q.add_rate_limited(key)
    for step in range(40):
        held = []
        while len(q):
            held.append(q.get_nowait())
        for n, key in enumerate(held):
            if step < 3 and n % 11 == 0:
                q.add_rate_limited(key)  # fails: retried later
            else:
                q.forget(key)
            q.done(key)
        clock.advance(0.5)
    assert len(limiter) == 0
    assert_empty(q, clock)


def test_stale_heap_entries_are_purged_while_items_are_still_waiting() -> None:
    clock = FakeClock()
    q = make(clock)
    q.add_after("anchor", 1e6)  # keeps the delayed set non-empty throughout
    for i in range(10_000):
        q.add_after(f"k{i}", 100.0)
        q.add(f"k{i}")  # makes the heap entry stale
        q.done(q.get_nowait())
    for i in range(1000):
        q.add_after("moving", 1000.0 - i)  # each earlier request supersedes the last
    assert q.sizes()["waiting"] == 2
    assert len(q._heap) < 100


async def test_queue_is_not_kept_alive_by_metrics() -> None:
    q = WorkQueue[str](f"gc-{uuid.uuid4().hex[:8]}", clock=FakeClock())
    q.add("a")
    ref = weakref.ref(q)
    del q
    gc.collect()
    assert ref() is None


def test_empty_queue_is_truthy() -> None:
    assert make()
    assert len(make()) == 0


# -- metrics ------------------------------------------------------------------------------
def sample(metric: str, name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"name": name, "controller": name, **labels})


def test_metrics_adds_retries_depth_and_durations() -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    q = WorkQueue[str](name, clock=clock)
    for key in ("a", "b", "a", "c"):
        q.add(key)
    q.add("low", priority=LOW_PRIORITY)
    assert sample("workqueue_adds_total", name) == 4  # the duplicate "a" is not an add
    assert sample("workqueue_depth", name, priority="0") == 3
    assert sample("workqueue_depth", name, priority="-100") == 1

    clock.advance(2.0)
    assert q.get_nowait() == "a"
    assert sample("workqueue_depth", name, priority="0") == 2
    assert sample("workqueue_queue_duration_seconds_count", name) == 1
    assert sample("workqueue_queue_duration_seconds_sum", name) == pytest.approx(2.0)

    clock.advance(3.0)
    assert sample("workqueue_unfinished_work_seconds", name) == pytest.approx(3.0)
    assert sample("workqueue_longest_running_processor_seconds", name) == pytest.approx(3.0)
    q.done("a")
    assert sample("workqueue_work_duration_seconds_count", name) == 1
    assert sample("workqueue_work_duration_seconds_sum", name) == pytest.approx(3.0)
    assert sample("workqueue_unfinished_work_seconds", name) == 0.0

    q.add_after("d", 1.0)
    q.add_after("d", 0.5)
    q.add_after("e", 0)  # no delay: an add, not a retry
    assert sample("workqueue_retries_total", name) == 2
    assert sample("workqueue_adds_total", name) == 5  # e
    clock.advance(0.5)
    assert sample("workqueue_adds_total", name) == 6  # d, once it became ready
    assert sample("workqueue_depth", name, priority="0") == 4  # b, c, e, d


def test_metrics_can_be_disabled() -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    q = WorkQueue[str](name, clock=FakeClock(), metrics=False)
    q.add("a")
    q.done(q.get_nowait())
    assert sample("workqueue_adds_total", name) is None
    assert sample("workqueue_depth", name, priority="0") is None


def test_controller_label_defaults_to_name_and_can_differ() -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    q = WorkQueue[str](name, clock=FakeClock(), controller="other")
    q.add("a")
    labels = {"name": name, "controller": "other"}
    assert REGISTRY.get_sample_value("workqueue_adds_total", labels) == 1
    assert sample("workqueue_adds_total", name) is None
