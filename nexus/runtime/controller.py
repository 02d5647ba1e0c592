"""Controller: watches feed a rate-limited work queue drained by reconcile workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from nexus.runtime import metrics
from nexus.runtime.client import ApiError
from nexus.runtime.handler import Mapper
from nexus.runtime.informer import Informer
from nexus.runtime.objects import Object
from nexus.runtime.ownwrites import OwnWrites, Verdict
from nexus.runtime.predicates import Predicate
from nexus.runtime.ratelimiter import RateLimiter
from nexus.runtime.reconcile import Reconciler, Request, RequeueAfterError, TerminalError
from nexus.runtime.resource import Resource
from nexus.runtime.workqueue import LOW_PRIORITY, NORMAL_PRIORITY, QueueShutDown, WorkQueue

log = structlog.get_logger("nexus.controller")


@dataclass(frozen=True, slots=True)
class ControllerOptions:
    """Per-controller settings; defaults as in controller-runtime unless stated."""

    #: Workers reconciling different keys in parallel (controller-runtime: 1).
    max_concurrent_reconciles: int = 1
    #: Retry delays for failed reconciles; default max(5 ms -> 1000 s per item, 10 qps/100).
    rate_limiter: RateLimiter[Request] | None = None
    #: Cancel a reconcile that runs longer than this (seconds); None = no limit.
    reconcile_timeout: float | None = None
    #: Whether this controller runs only on the elected leader.
    need_leader_election: bool = True
    #: Drop the watch echoes of the writes the reconciler makes through
    #: ``own_writes.writer(client)`` (see :mod:`nexus.runtime.ownwrites`); None: every event
    #: that passes the predicates wakes the controller, as in controller-runtime.
    own_writes: OwnWrites | None = None


class _Enqueuer:
    """Bridges informer events to the queue through predicates and a mapper.

    Objects from the first list and periodic resyncs are queued at low priority so that real
    changes made after a restart are served first (controller-runtime >= 0.23).
    """

    __slots__ = ("mapper", "name", "own_writes", "predicates", "queue", "resource")

    def __init__(
        self,
        queue: WorkQueue[Request],
        mapper: Mapper,
        predicates: Sequence[Predicate],
        name: str = "",
        *,
        resource: Resource | None = None,
        own_writes: OwnWrites | None = None,
    ) -> None:
        #: Labels this handler's errors in ``informer_handler_errors_total``.
        self.name = name
        self.queue = queue
        self.mapper = mapper
        self.predicates = tuple(predicates)
        self.resource = resource
        self.own_writes = own_writes if resource is not None else None

    def _enqueue(self, obj: Object, priority: int) -> None:
        for req in self.mapper(obj):
            self.queue.add(req, priority=priority)

    def _offer(self, obj: Object, old: Object | None, priority: int) -> None:
        """Enqueue, unless the event is the echo of the reconciler's own write."""
        own, res = self.own_writes, self.resource
        if own is None or res is None:
            self._enqueue(obj, priority)
            return
        verdict = own.verdict(res, obj, old)
        if verdict is Verdict.CHANGE:
            self._enqueue(obj, priority)
        elif verdict is Verdict.PENDING:

            def settle() -> None:
                if own.verdict(res, obj, old) is not Verdict.ECHO:
                    self._enqueue(obj, priority)

            own.when_answered(res, obj, settle)

    def on_add(self, obj: Object, initial: bool) -> None:
        if all(p.create(obj) for p in self.predicates):
            self._offer(obj, None, LOW_PRIORITY if initial else NORMAL_PRIORITY)

    def on_update(self, old: Object, new: Object) -> None:
        if all(p.update(old, new) for p in self.predicates):
            resync = (old.get("metadata") or {}).get("resourceVersion") == (
                new.get("metadata") or {}
            ).get("resourceVersion")
            if resync:  # a periodic resync is never an echo
                self._enqueue(new, LOW_PRIORITY)
            else:
                self._offer(new, old, NORMAL_PRIORITY)

    def on_delete(self, obj: Object, final_state_unknown: bool) -> None:
        if all(p.delete(obj) for p in self.predicates):
            self._enqueue(obj, NORMAL_PRIORITY)


class Controller:
    """Runs a :class:`Reconciler` for requests produced by watches.

    Guarantees:
      * a request is never reconciled by two workers at once, and changes that arrive during a
        reconcile cause exactly one more reconcile after it (the queue's dirty/processing sets);
      * an exception is logged, counted in ``controller_runtime_reconcile_errors_total`` and
        retried with per-request exponential backoff; a ``Result`` returned with it would be
        ignored; :class:`TerminalError` is counted and not retried;
        :class:`RequeueAfterError` is counted and retried after its fixed delay;
      * ``Result(requeue_after=s)`` resets the backoff and schedules the request after ``s``;
      * a predicate or mapping function that raises on an event queues nothing for that
        event; the informer logs it and counts it in ``informer_handler_errors_total`` with
        ``handler`` = this controller's name, and other controllers still get the event;
      * on stop, workers finish the request in hand and take no new one.
    """

    def __init__(
        self,
        name: str,
        reconciler: Reconciler,
        options: ControllerOptions | None = None,
    ) -> None:
        self.name = name
        self.reconciler = reconciler
        self.options = options or ControllerOptions()
        if self.options.max_concurrent_reconciles < 1:
            raise ValueError("max_concurrent_reconciles must be >= 1")
        self.queue: WorkQueue[Request] = WorkQueue(
            name, rate_limiter=self.options.rate_limiter, controller=name
        )
        self._watched: list[Informer] = []
        self._workers: list[asyncio.Task[None]] = []
        self._log = log.bind(controller=name)
        self._reconcile_total = {
            r: metrics.RECONCILE_TOTAL.labels(name, r) for r in metrics.RESULTS
        }
        self._errors = metrics.RECONCILE_ERRORS.labels(name)
        self._terminal = metrics.TERMINAL_RECONCILE_ERRORS.labels(name)
        self._panics = metrics.RECONCILE_PANICS.labels(name)
        self._timeouts = metrics.RECONCILE_TIMEOUTS.labels(name)
        self._time = metrics.RECONCILE_TIME.labels(name)
        self._active = metrics.ACTIVE_WORKERS.labels(name)
        metrics.init_controller_metrics(name, self.options.max_concurrent_reconciles)

    @property
    def need_leader_election(self) -> bool:
        return self.options.need_leader_election

    def watch(self, informer: Informer, mapper: Mapper, *predicates: Predicate) -> None:
        """Queue the requests ``mapper`` derives from every event that passes ``predicates``."""
        informer.add_event_handler(
            _Enqueuer(
                self.queue,
                mapper,
                predicates,
                self.name,
                resource=informer.resource,
                own_writes=self.options.own_writes,
            )
        )
        self._watched.append(informer)

    @property
    def informers(self) -> list[Informer]:
        return list(self._watched)

    async def start(self) -> None:
        """Start the workers; returns once they are running (caches must have synced)."""
        for i in range(self.options.max_concurrent_reconciles):
            self._workers.append(
                asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            )
        self._log.info("controller.started", workers=len(self._workers))

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking requests; wait for the ones in hand (cancel them after ``timeout``)."""
        self.queue.shutdown()
        if not self._workers:
            return
        _, pending = await asyncio.wait(self._workers, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            self._log.warning("controller.stop_timeout", cancelled=len(pending))
        self._workers.clear()
        self._log.info("controller.stopped")

    async def _worker(self) -> None:
        queue = self.queue
        while True:
            try:
                req = await queue.get()
            except QueueShutDown:
                return
            self._active.inc()
            try:
                await self._reconcile(req)
            finally:
                self._active.dec()
                queue.done(req)
            # A reconcile that never suspends (a converged object: cache reads only) and a
            # get() that finds an item ready would otherwise let one worker drain the whole
            # queue in a single event-loop step: no watch event, probe, metrics scrape or
            # lease renewal could run meanwhile, and a change queued at normal priority could
            # not overtake a low-priority backlog it cannot even be added to.
            await asyncio.sleep(0)

    async def _reconcile(self, req: Request) -> None:
        queue = self.queue
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.options.reconcile_timeout):
                result = await self.reconciler.reconcile(req)
        except TerminalError as exc:
            self._errors.inc()
            self._terminal.inc()
            self._reconcile_total["error"].inc()
            queue.forget(req)
            self._log.error("reconcile.terminal_error", request=req.key, error=str(exc))
        except RequeueAfterError as exc:
            self._errors.inc()
            self._reconcile_total["error"].inc()
            queue.forget(req)
            queue.add_after(req, exc.requeue_after)
            self._log.warning(
                "reconcile.failed",
                request=req.key,
                error=str(exc),
                requeue_after=exc.requeue_after,
            )
        except TimeoutError:
            self._timeouts.inc()
            self._errors.inc()
            self._reconcile_total["error"].inc()
            queue.add_rate_limited(req)
            self._log.error(
                "reconcile.timeout", request=req.key, timeout=self.options.reconcile_timeout
            )
        except ApiError as exc:
            self._errors.inc()
            self._reconcile_total["error"].inc()
            queue.add_rate_limited(req)
            if exc.conflict:
                # A stale cache after our own write: expected, retried quickly, not an alarm.
                self._log.info("reconcile.conflict", request=req.key, error=exc.message)
            else:
                self._log.error("reconcile.error", request=req.key, error=str(exc))
        except Exception as exc:
            self._errors.inc()
            self._reconcile_total["error"].inc()
            if not isinstance(exc, (ConnectionError, OSError)):
                self._panics.inc()
            queue.add_rate_limited(req)
            self._log.exception("reconcile.error", request=req.key)
        else:
            if result is not None and result.requeue_after:
                queue.forget(req)
                queue.add_after(req, result.requeue_after)
                self._reconcile_total["requeue_after"].inc()
            elif result is not None and result.requeue:
                queue.add_rate_limited(req)
                self._reconcile_total["requeue"].inc()
            else:
                queue.forget(req)
                self._reconcile_total["success"].inc()
        finally:
            self._time.observe(time.perf_counter() - start)
