"""Property tests.

1. Under any interleaving of adds, delays, rate-limited retries, workers (blocking gets,
   get_nowait, done, cancellation) and clock advances, the queue never hands one key to two
   workers at once, never hands out a key nobody asked for since it last started, and never
   loses a request: after draining, every key added after its last processing start has been
   processed again; and then every internal structure is empty.
2. Without delays, the order of gets matches a slow reference model of priorities, FIFO,
   deduplication and requeue-after-done exactly.

Each example runs deterministically (a FakeClock; for 1, a private event loop whose tasks are
stepped explicitly). The lazy-deletion bookkeeping is checked against a full scan after every
step, so a miscount fails at the step that causes it, not only when it loses an item.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st

from nexus.runtime.clock import FakeClock
from nexus.runtime.ratelimiter import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
)
from nexus.runtime.workqueue import LOW_PRIORITY, NORMAL_PRIORITY, WorkQueue

# Few keys and workers make collisions (re-adds while held, raises, races) frequent.
KEYS = ("a", "b", "c")
WORKERS = 3
PRIORITIES = (LOW_PRIORITY, NORMAL_PRIORITY, 5)

keys = st.sampled_from(KEYS)
workers = st.integers(0, WORKERS - 1)
priorities = st.sampled_from(PRIORITIES)
delays = st.one_of(st.sampled_from((-1.0, 0.0, 0.5, 1.0)), st.floats(0.0, 5.0))

add = st.tuples(st.just("add"), keys, priorities)
get_nowait = st.tuples(st.just("get_nowait"), workers)
done = st.tuples(st.just("done"), workers)
# one_of picks branches uniformly: listing the core steps twice makes them twice as likely.
structured_operations = st.lists(
    st.one_of(
        add,
        add,
        st.tuples(st.just("add_after"), keys, delays, priorities),
        st.tuples(st.just("rate"), keys, priorities),
        st.tuples(st.just("forget"), keys),
        st.tuples(st.just("get"), workers),
        get_nowait,
        get_nowait,
        done,
        done,
        st.tuples(st.just("cancel"), workers),
        st.tuples(st.just("add_cancel"), keys, workers, priorities),
        st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
    ),
    min_size=5,
    max_size=80,
)


def uniform_operations(rnd: random.Random) -> list[tuple[Any, ...]]:
    """The same steps drawn uniformly from a seeded generator.

    Hypothesis shrinks its own draws well but skews them towards repeating one step; a run of
    several specific steps in a row (add, raise, get, re-add while held, get) came up in well
    under half the runs without this. Failures still show the steps (see ``note``).
    """
    ops: list[tuple[Any, ...]] = []
    for _ in range(rnd.randint(10, 80)):
        key, w, prio = rnd.choice(KEYS), rnd.randrange(WORKERS), rnd.choice(PRIORITIES)
        kind = rnd.choice(
            ("add", "add", "add_after", "rate", "forget", "get", "get_nowait", "get_nowait",
             "done", "done", "cancel", "add_cancel", "advance")
        )  # fmt: skip
        match kind:
            case "add" | "rate":
                ops.append((kind, key, prio))
            case "add_after":
                ops.append((kind, key, rnd.choice((-1.0, 0.0, 0.5, 1.0, rnd.uniform(0, 5))), prio))
            case "forget":
                ops.append((kind, key))
            case "add_cancel":
                ops.append((kind, key, w, prio))
            case "advance":
                ops.append((kind, rnd.uniform(0, 3)))
            case _:
                ops.append((kind, w))
    return ops


operations = st.one_of(
    structured_operations, st.randoms(use_true_random=True).map(uniform_operations)
)


class Model:
    """What the test knows: who holds what, and which keys were asked for since they last
    started processing."""

    def __init__(self, q: WorkQueue[str]) -> None:
        self.q = q
        self.holding: dict[int, str] = {}
        self.tasks: dict[int, asyncio.Task[str]] = {}
        self.pending: dict[str, bool] = dict.fromkeys(KEYS, False)
        self.starts: dict[str, int] = dict.fromkeys(KEYS, 0)

    def requested(self, key: str) -> None:
        self.pending[key] = True

    def started(self, worker: int, key: str) -> None:
        assert key not in self.holding.values(), f"{key} handed to two workers"
        assert self.pending[key], f"{key} handed out without a request since it last started"
        self.pending[key] = False
        self.starts[key] += 1
        self.holding[worker] = key

    def idle(self, worker: int) -> bool:
        return worker not in self.holding and worker not in self.tasks

    def harvest(self) -> None:
        for worker, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[worker]
                if not task.cancelled():
                    self.started(worker, task.result())

    def check_invariants(self) -> None:
        q = self.q
        sizes = q.sizes()
        assert len(q) == sizes["ready"] == sum(level.live for level in q._levels.values())
        assert not set(q._waiting) & set(q._dirty), "an item is both delayed and queued"
        # After settling, every hand-off has reached its worker or been given back.
        assert set(q._processing) == set(self.holding.values())
        check_structure(q)
        if any(not f.done() for f in q._waiters):
            assert len(q) == 0, "an item is ready while a get() is waiting"


def check_structure(q: WorkQueue[str]) -> None:
    """The lazy-deletion bookkeeping matches a full scan of the deques."""
    live_seen: list[str] = []
    for priority, level in q._levels.items():
        assert level.priority == priority
        live = [e[0] for e in level.q if q._dirty.get(e[0]) is e]
        assert level.live == len(live) > 0, "level counter out of step with its deque"
        live_seen += live
    assert len(live_seen) == len(set(live_seen)) == len(q), "an item is ready twice"
    # Every dirty item is either ready exactly once or waiting for done().
    assert set(q._dirty) == set(live_seen) | (set(q._dirty) & set(q._processing))
    assert not set(live_seen) & set(q._processing), "a held item is also ready"
    assert [lvl.priority for lvl in q._order] == sorted(q._levels, reverse=True)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def scenario(ops: list[tuple[Any, ...]], starve_after: float, starve_every: int) -> None:
    clock = FakeClock()
    limiter = MaxOfRateLimiter[str](
        ItemExponentialFailureRateLimiter(0.5, 4.0), BucketRateLimiter(2.0, 3, clock)
    )
    q = WorkQueue[str](
        clock=clock,
        rate_limiter=limiter,
        metrics=False,
        starvation_after=starve_after,
        starvation_every=starve_every,
    )
    m = Model(q)

    for op in ops:
        match op:
            case ("add", key, prio):
                m.requested(key)
                q.add(key, priority=prio)
            case ("add_after", key, delay, prio):
                m.requested(key)
                q.add_after(key, delay, priority=prio)
            case ("rate", key, prio):
                m.requested(key)
                q.add_rate_limited(key, priority=prio)
            case ("forget", key):
                q.forget(key)
            case ("get", w) if m.idle(w):
                m.tasks[w] = asyncio.create_task(q.get())
            case ("get_nowait", w) if m.idle(w) and len(q):
                m.started(w, q.get_nowait())
            case ("done", w) if w in m.holding:
                q.done(m.holding.pop(w))
            case ("cancel", w) if w in m.tasks:
                m.tasks[w].cancel()
            case ("add_cancel", key, w, prio):
                # Cancel a waiter right after an add may have handed it the key, before it
                # could run: the key must not be lost with it.
                m.requested(key)
                q.add(key, priority=prio)
                if w in m.tasks:
                    m.tasks[w].cancel()
            case ("advance", dt):
                clock.advance(dt)
            case _:
                pass  # a worker step that does not apply in the worker's current state
        await settle()
        m.harvest()
        m.check_invariants()

    # Drain: finish everything held, let every delay expire, and keep working until idle.
    for _ in range(1000):
        for w in list(m.holding):
            q.done(m.holding.pop(w))
        clock.advance(1000.0)
        await settle()
        m.harvest()
        idle = [w for w in range(WORKERS) if m.idle(w)]
        while len(q) and idle:
            w = idle.pop()
            m.started(w, q.get_nowait())
        m.check_invariants()
        if not m.holding and not len(q) and not q.sizes()["waiting"]:
            break
    else:
        raise AssertionError(f"queue did not drain: {q.sizes()}")

    lost = [key for key, pending in m.pending.items() if pending]
    assert not lost, f"requests lost for {lost}"

    for key in KEYS:
        q.forget(key)
    sizes = q.sizes()
    assert sizes == dict.fromkeys(sizes, 0), sizes
    assert q._heap == []
    assert q._levels == {}
    assert q._timer is None
    assert clock.pending == 0
    assert len(q._waiters) == len(m.tasks)

    q.shutdown()
    results = await asyncio.gather(*m.tasks.values(), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)


@settings(max_examples=200, deadline=None)
@given(
    ops=operations,
    starve_after=st.sampled_from((0.0, 1.0, 5.0)),
    starve_every=st.integers(0, 3),
)
def test_no_double_processing_no_spurious_and_no_lost_requests(
    ops: list[tuple[Any, ...]], starve_after: float, starve_every: int
) -> None:
    note(f"ops={ops}")
    # A private loop per example: independent of the session loop the async tests share.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario(ops, starve_after, starve_every))
    finally:
        loop.close()


class Reference:
    """A slow, obviously correct model of ordering without delays or starvation: highest
    priority first, then the order in which items joined that priority."""

    def __init__(self) -> None:
        self.ready: dict[str, tuple[int, int]] = {}  # key -> (priority, joined)
        self.requeue: dict[str, int] = {}  # held key -> priority it is re-added with
        self.held: set[str] = set()
        self.tick = 0

    def _join(self, key: str, priority: int) -> None:
        self.tick += 1
        self.ready[key] = (priority, self.tick)

    def add(self, key: str, priority: int) -> None:
        if key in self.ready:
            if priority > self.ready[key][0]:
                self._join(key, priority)
        elif key in self.held:
            self.requeue[key] = max(priority, self.requeue.get(key, priority))
        else:
            self._join(key, priority)

    def get(self) -> str | None:
        if not self.ready:
            return None
        key = min(self.ready, key=lambda k: (-self.ready[k][0], self.ready[k][1]))
        del self.ready[key]
        self.held.add(key)
        return key

    def done(self, key: str) -> None:
        self.held.discard(key)
        if key in self.requeue:
            self._join(key, self.requeue.pop(key))


# Two keys that move between two priorities make raises and re-adds of held keys frequent.
REFERENCE_STEPS: tuple[tuple[Any, ...], ...] = (
    ("add", "a", LOW_PRIORITY),
    ("add", "a", NORMAL_PRIORITY),
    ("add", "b", LOW_PRIORITY),
    ("add", "b", NORMAL_PRIORITY),
    ("add", "c", LOW_PRIORITY),
    ("get",),
    ("get",),
    ("done", 0),  # the longest held
    ("done", -1),  # the most recently got
)
reference_steps = st.one_of(
    st.lists(st.integers(0, len(REFERENCE_STEPS) - 1), min_size=10, max_size=60),
    # See uniform_operations for why half the examples are drawn uniformly.
    st.randoms(use_true_random=True).map(
        lambda rnd: [rnd.randrange(len(REFERENCE_STEPS)) for _ in range(rnd.randint(10, 60))]
    ),
)


@settings(max_examples=300, deadline=None)
@given(reference_steps)
def test_order_matches_a_reference_model(steps: list[int]) -> None:
    q = WorkQueue[str](clock=FakeClock(), metrics=False, starvation_after=float("inf"))
    ref = Reference()
    held: list[str] = []
    note(f"steps={[REFERENCE_STEPS[i] for i in steps]}")
    for step in steps:
        match REFERENCE_STEPS[step]:
            case ("add", key, prio):
                q.add(key, priority=prio)
                ref.add(key, prio)
            case ("get",):
                expected = ref.get()
                if expected is None:
                    assert len(q) == 0
                else:
                    assert q.get_nowait() == expected
                    held.append(expected)
            case ("done", i) if held:
                key = held.pop(i)
                q.done(key)
                ref.done(key)
            case _:
                pass
        assert len(q) == len(ref.ready)
        check_structure(q)
