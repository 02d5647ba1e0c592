"""The controller work queue: deduplicating, delaying, rate-limited and prioritised.

Semantics follow client-go's ``util/workqueue`` (dirty/processing sets, delaying queue, rate
limiting queue) and controller-runtime's priority queue (priorities, ``LowPriority`` for
objects from the initial list and resyncs). Items are keys (hashable, compared by equality),
never objects: a worker reads the current state from a cache when it gets a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Hashable, Sized
from functools import partial
from heapq import heapify, heappop, heappush
from typing import Any, Final

from prometheus_client import Counter, Histogram

from nexus.runtime import metrics as _metrics
from nexus.runtime.clock import Cancellable, Clock, RealClock
from nexus.runtime.ratelimiter import RateLimiter, default_controller_rate_limiter

__all__ = ["LOW_PRIORITY", "NORMAL_PRIORITY", "QueueShutDown", "WorkQueue"]

#: controller-runtime's ``handler.LowPriority``: initial-list and resync events.
LOW_PRIORITY: Final = -100
NORMAL_PRIORITY: Final = 0


class QueueShutDown(Exception):
    """Raised by :meth:`WorkQueue.get` once :meth:`WorkQueue.shutdown` has been called."""


# A ready (or to-be-ready) item: (item, priority, time it started waiting to be processed).
# Each add creates a new tuple, so "the tuple in _dirty is this tuple" tells a live deque
# entry from a stale one left behind by a priority raise, without sequence numbers.
type _Entry[T] = tuple[T, int, float]
# A delayed item in the heap: (ready at, tie-breaker, item); the tie-breaker keeps items,
# which need not be orderable, out of the comparison.
type _Delayed[T] = tuple[float, int, T]


class _Level[T]:
    """The FIFO of ready items of one priority; ``live`` excludes stale entries."""

    __slots__ = ("live", "priority", "q")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.q: deque[_Entry[T]] = deque()
        self.live = 0


class WorkQueue[T: Hashable]:
    """An asyncio work queue for controller workers.

    Guarantees:
      * **Deduplication**: an item waiting to be processed is held once, however often it is
        added; re-adding it can only raise its priority.
      * **No concurrent processing**: an item handed out by :meth:`get` is not handed out
        again before :meth:`done` is called for it. Adds in the meantime mark it dirty, and
        ``done`` queues it again, so every add is followed by at least one processing that
        starts after it (no lost updates).
      * **Ordering**: higher priority first; FIFO within a priority by the time an item became
        ready (an item whose priority is raised joins the back of its new priority). Under
        continuous higher-priority traffic, once the oldest item of a lower priority has been
        ready for more than ``starvation_after`` seconds, at least one of every
        ``starvation_every + 1`` gets serves the oldest such item (controller-runtime #3496).
      * **Delays**: :meth:`add_after` keeps the earliest requested time per item and an
        immediate add overrides a pending delay. Delays run on a single clock timer for the
        earliest deadline; nothing polls.
      * **Waiting**: :meth:`get` returns without suspending when an item is ready; otherwise
        waiters are served first come, first served, and each ready item wakes exactly one.
      * **Shutdown**: afterwards adds are ignored, :meth:`get` raises :class:`QueueShutDown`
        (waiters are woken with it) and queued items are dropped: a stopping controller only
        finishes what it holds; the next start relists everything.
      * **Bounded memory**: per-item state exists only for items that are ready, delayed,
        processing or failing in the rate limiter; it is released when they are done and
        forgotten (see :meth:`sizes`).

    Not thread-safe: use it from one event loop. Metrics are only recorded for named queues
    (as in client-go) and when ``metrics`` is true; a second queue with the same name takes
    over the scrape-time gauges.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_depth_bound",
        "_dirty",
        "_heap",
        "_levels",
        "_m_adds",
        "_m_queue",
        "_m_retries",
        "_m_work",
        "_now",
        "_order",
        "_processing",
        "_ready",
        "_seq",
        "_served",
        "_shutting_down",
        "_starve_after",
        "_starve_every",
        "_timer",
        "_timer_when",
        "_waiters",
        "_waiting",
        "controller",
        "name",
        "rate_limiter",
    )

    def __init__(
        self,
        name: str = "",
        *,
        rate_limiter: RateLimiter[T] | None = None,
        clock: Clock | None = None,
        controller: str | None = None,
        metrics: bool = True,
        starvation_after: float = 5.0,
        starvation_every: int = 4,
    ) -> None:
        if starvation_after < 0 or starvation_every < 0:
            raise ValueError("starvation_after and starvation_every must be >= 0")
        self.name = name
        self.controller = controller if controller is not None else name
        self._clock: Clock = clock if clock is not None else RealClock()
        self._now = self._clock.now
        self.rate_limiter: RateLimiter[T] = (
            rate_limiter if rate_limiter is not None else default_controller_rate_limiter(clock)
        )
        self._starve_after = starvation_after
        self._starve_every = starvation_every
        self._shutting_down = False

        # item -> entry for every item that needs processing: ready ones, and ones added
        # while being processed (those are in no level until done()).
        self._dirty: dict[T, _Entry[T]] = {}
        # item -> time its processing started.
        self._processing: dict[T, float] = {}
        self._levels: dict[int, _Level[T]] = {}
        # Levels with live items, highest priority first; usually one or two long.
        self._order: list[_Level[T]] = []
        self._ready = 0
        # Gets served from the top level since a starved item was last served.
        self._served = 0
        self._waiters: deque[asyncio.Future[_Entry[T]]] = deque()

        # item -> (its live heap entry, priority). Disjoint from _dirty: a dirty item will be
        # processed anyway, so delaying it again would add nothing.
        self._waiting: dict[T, tuple[_Delayed[T], int]] = {}
        self._heap: list[_Delayed[T]] = []
        self._seq = 0
        self._timer: Cancellable | None = None
        self._timer_when = 0.0

        self._m_adds: Counter | None = None
        self._m_retries: Counter | None = None
        self._m_queue: Histogram | None = None
        self._m_work: Histogram | None = None
        self._depth_bound: set[int] = set()
        if metrics and name:
            self._bind_metrics()

    # -- metrics ------------------------------------------------------------------------------
    def _bind_metrics(self) -> None:
        name, ctrl = self.name, self.controller
        self._m_adds = _metrics.WORKQUEUE_ADDS.labels(name, ctrl)
        self._m_retries = _metrics.WORKQUEUE_RETRIES.labels(name, ctrl)
        self._m_queue = _metrics.WORKQUEUE_QUEUE_DURATION.labels(name, ctrl)
        self._m_work = _metrics.WORKQUEUE_WORK_DURATION.labels(name, ctrl)
        # Weak references: the registry is global and must not keep dead queues alive.
        ref = weakref.ref(self)
        _metrics.WORKQUEUE_UNFINISHED_WORK.labels(name, ctrl).set_function(
            partial(_unfinished_work, ref)
        )
        _metrics.WORKQUEUE_LONGEST_RUNNING.labels(name, ctrl).set_function(
            partial(_longest_running, ref)
        )
        self._bind_depth(NORMAL_PRIORITY)

    def _bind_depth(self, priority: int) -> None:
        # Depth is read from the level counters at scrape time, so the hot path pays nothing
        # for it; each priority's series is created when that priority is first used.
        self._depth_bound.add(priority)
        _metrics.WORKQUEUE_DEPTH.labels(self.name, self.controller, str(priority)).set_function(
            partial(_depth, weakref.ref(self), priority)
        )

    # -- adding -------------------------------------------------------------------------------
    def add(self, item: T, *, priority: int = NORMAL_PRIORITY) -> None:
        """Queue ``item`` now; see the class docstring for deduplication and priorities."""
        if self._shutting_down:
            return
        dirty = self._dirty
        cur = dirty.get(item)
        if cur is not None:
            if priority > cur[1]:
                self._raise_priority(cur, priority)
            return
        if self._waiting:
            delayed = self._waiting.pop(item, None)
            if delayed is not None:
                # The immediate add wins over the delay but keeps the delayed priority if
                # that was higher, as controller-runtime merges the two requests.
                priority = max(priority, delayed[1])
                self._prune_heap()
        entry = (item, priority, self._now())
        dirty[item] = entry
        if self._m_adds is not None:
            self._m_adds.inc()
        if item in self._processing:
            return  # done() queues it
        if self._waiters and self._hand_off(entry):
            return
        level = self._levels.get(priority)
        if level is None:
            level = self._new_level(priority)
        level.q.append(entry)
        level.live += 1
        self._ready += 1

    def add_after(self, item: T, delay: float, *, priority: int = NORMAL_PRIORITY) -> None:
        """Queue ``item`` once ``delay`` seconds have passed (now if ``delay <= 0``).

        If it is already delayed the earlier time wins; if it is already waiting to be
        processed this does nothing (it will be processed anyway).
        """
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(item, priority=priority)
            return
        if self._m_retries is not None:
            self._m_retries.inc()
        if item in self._dirty:
            return
        when = self._now() + delay
        waiting = self._waiting
        cur = waiting.get(item)
        if cur is not None:
            priority = max(priority, cur[1])
            if cur[0][0] <= when:
                if priority != cur[1]:
                    waiting[item] = (cur[0], priority)
                return
        self._seq += 1
        delayed = (when, self._seq, item)
        waiting[item] = (delayed, priority)
        heappush(self._heap, delayed)
        if cur is not None:
            self._prune_heap()  # the replaced heap entry is now stale
        if self._timer is None or when < self._timer_when:
            self._arm(when)

    def add_rate_limited(self, item: T, *, priority: int = NORMAL_PRIORITY) -> None:
        """Queue ``item`` after the delay the rate limiter assigns (recording a failure)."""
        self.add_after(item, self.rate_limiter.when(item), priority=priority)

    def forget(self, item: T) -> None:
        """Clear ``item``'s failure history in the rate limiter (call it after a success)."""
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        """Failures the rate limiter has recorded for ``item`` since it was last forgotten."""
        return self.rate_limiter.num_requeues(item)

    # -- taking -------------------------------------------------------------------------------
    async def get(self) -> T:
        """The next item to process; call :meth:`done` with it afterwards.

        Raises :class:`QueueShutDown` once the queue is shut down.
        """
        if self._ready:  # shutdown() empties the levels, so this implies not shutting down
            return self._pop()
        if self._shutting_down:
            raise QueueShutDown
        fut: asyncio.Future[_Entry[T]] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            entry = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Cancelled after an item was handed over but before we could return it:
                # give it back, or nobody would ever process or release it.
                self._unget(fut.result())
            else:
                with contextlib.suppress(ValueError):  # already popped by a hand-off
                    self._waiters.remove(fut)
            raise
        return entry[0]

    def get_nowait(self) -> T:
        """Like :meth:`get`, but raises ``asyncio.QueueEmpty`` instead of waiting."""
        if self._ready:
            return self._pop()
        if self._shutting_down:
            raise QueueShutDown
        raise asyncio.QueueEmpty

    def done(self, item: T) -> None:
        """Mark ``item`` processed; if it was added meanwhile it becomes ready again."""
        start = self._processing.pop(item, None)
        if start is None:
            return
        if self._m_work is not None:
            self._m_work.observe(self._now() - start)
        entry = self._dirty.get(item)
        if entry is not None and not (self._waiters and self._hand_off(entry)):
            self._push(entry)

    # -- lifecycle ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop handing out items, drop queued ones and wake every waiting :meth:`get`."""
        if self._shutting_down:
            return
        self._shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._waiting.clear()
        self._dirty.clear()
        self._levels.clear()
        self._order.clear()
        self._ready = 0
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_exception(QueueShutDown())

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        """Items ready to be handed out now (the ``workqueue_depth`` over all priorities)."""
        return self._ready

    def __bool__(self) -> bool:
        # An empty queue is still a queue: keeps `queue or WorkQueue()` from replacing it.
        return True

    def sizes(self) -> dict[str, int]:
        """Sizes of the per-item structures, for leak checks: all 0 once every item is done
        (and forgotten, for ``rate_limited``)."""
        rl = self.rate_limiter
        return {
            "ready": self._ready,
            "dirty": len(self._dirty),
            "processing": len(self._processing),
            "waiting": len(self._waiting),
            "rate_limited": len(rl) if isinstance(rl, Sized) else 0,
        }

    def __repr__(self) -> str:
        return f"<WorkQueue {self.name!r} {self.sizes()}>"

    # -- internals ----------------------------------------------------------------------------
    def _new_level(self, priority: int) -> _Level[T]:
        level: _Level[T] = _Level(priority)
        self._levels[priority] = level
        order = self._order
        i = 0
        while i < len(order) and order[i].priority > priority:
            i += 1
        order.insert(i, level)
        if self._m_adds is not None and priority not in self._depth_bound:
            self._bind_depth(priority)
        return level

    def _drop_level(self, level: _Level[T]) -> None:
        # Dropping the deque also drops any stale entries still in it.
        del self._levels[level.priority]
        self._order.remove(level)

    def _push(self, entry: _Entry[T], *, front: bool = False) -> None:
        priority = entry[1]
        level = self._levels.get(priority)
        if level is None:
            level = self._new_level(priority)
        if front:
            level.q.appendleft(entry)
        else:
            level.q.append(entry)
        level.live += 1
        self._ready += 1

    def _raise_priority(self, cur: _Entry[T], priority: int) -> None:
        item = cur[0]
        entry = (item, priority, cur[2])
        self._dirty[item] = entry
        if item in self._processing:
            return  # not in a level yet; done() will queue it at the new priority
        # The old entry stays in its deque, recognisably stale (no longer in _dirty).
        old = self._levels[cur[1]]
        old.live -= 1
        if not old.live:
            self._drop_level(old)
        self._ready -= 1
        self._push(entry)

    def _hand_off(self, entry: _Entry[T]) -> bool:
        """Give a newly ready entry straight to the longest waiting get(); False if none."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if fut.done():
                continue  # its get() was cancelled and has not removed it yet
            item = entry[0]
            del self._dirty[item]
            now = self._now()
            self._processing[item] = now
            if self._m_queue is not None:
                self._m_queue.observe(now - entry[2])
            fut.set_result(entry)
            return True
        return False

    def _unget(self, entry: _Entry[T]) -> None:
        item = entry[0]
        if self._processing.pop(item, None) is None or self._shutting_down:
            return
        cur = self._dirty.get(item)
        if cur is not None:
            # Added again while in the cancelled waiter's hands: merge the two requests.
            entry = (item, max(cur[1], entry[1]), entry[2])
        self._dirty[item] = entry
        if not (self._waiters and self._hand_off(entry)):
            # It was first in line when handed over; keep it there.
            self._push(entry, front=True)

    def _pop(self) -> T:
        """Take the next ready item (there must be one) and mark it processing."""
        served = self._served + 1
        order = self._order
        level = order[0]
        if served > self._starve_every and len(order) > 1:
            starved = self._starved_level()
            if starved is not None:
                level = starved
                served = 0
        self._served = served
        popleft = level.q.popleft
        dirty = self._dirty
        while True:
            entry = popleft()
            item = entry[0]
            cur = dirty.pop(item, None)
            if cur is entry:
                break
            if cur is not None:
                dirty[item] = cur  # a stale entry: the live one is elsewhere, keep it
        level.live -= 1
        if not level.live:
            self._drop_level(level)
        self._ready -= 1
        if self._m_queue is not None:
            now = self._now()
            self._m_queue.observe(now - entry[2])
            self._processing[item] = now
        else:
            self._processing[item] = 0.0
        return item

    def _starved_level(self) -> _Level[T] | None:
        """The lower-priority level whose head has waited longest beyond the threshold."""
        oldest = self._now() - self._starve_after
        best = None
        dirty = self._dirty
        for level in self._order[1:]:
            q = level.q
            while dirty.get(q[0][0]) is not q[0]:
                q.popleft()  # stale; live > 0 guarantees a live entry further on
            if q[0][2] < oldest:
                oldest = q[0][2]
                best = level
        return best

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._clock.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._shutting_down:
            return
        # An event loop may run a timer up to its clock resolution early; having fired, the
        # timer's own deadline counts as reached.
        now = max(self._now(), self._timer_when)
        heap = self._heap
        waiting = self._waiting
        while heap and heap[0][0] <= now:
            delayed = heappop(heap)
            item = delayed[2]
            cur = waiting.get(item)
            if cur is None or cur[0] is not delayed:
                continue  # stale: the item was added, or rescheduled earlier
            del waiting[item]
            self.add(item, priority=cur[1])
        self._prune_heap()
        heap = self._heap  # pruning may have rebuilt it
        while heap:
            head = heap[0]
            cur = waiting.get(head[2])
            if cur is not None and cur[0] is head:
                self._arm(head[0])
                break
            heappop(heap)  # a stale head would only cause an early wake-up

    def _prune_heap(self) -> None:
        """Drop heap entries nobody waits for, lazily but before they pile up."""
        waiting = self._waiting
        if not waiting:
            self._heap.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif len(self._heap) > 2 * len(waiting) + 32:
            self._heap = [delayed for delayed, _ in waiting.values()]
            heapify(self._heap)


def _unfinished_work(ref: weakref.ref[WorkQueue[Any]]) -> float:
    q = ref()
    if q is None:
        return 0.0
    now = q._now()
    # Copied in one step: a scrape may run in the metrics server's thread.
    starts = tuple(q._processing.values())
    return sum(now - s for s in starts)


def _longest_running(ref: weakref.ref[WorkQueue[Any]]) -> float:
    q = ref()
    if q is None:
        return 0.0
    starts = tuple(q._processing.values())
    return q._now() - min(starts) if starts else 0.0


def _depth(ref: weakref.ref[WorkQueue[Any]], priority: int) -> float:
    q = ref()
    level = q._levels.get(priority) if q is not None else None
    return float(level.live) if level is not None else 0.0
