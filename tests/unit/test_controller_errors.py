"""Controller error handling: RequeueAfterError is an error for the metrics, a fixed delay for
the queue, and wipes the request's failure backoff. Time is driven by a FakeClock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from prometheus_client import REGISTRY

from nexus.runtime.clock import FakeClock
from nexus.runtime.controller import Controller
from nexus.runtime.reconcile import Request, RequeueAfterError, Result
from nexus.runtime.workqueue import WorkQueue

REQ = Request("a", "ns")


class Scripted:
    """Raises (or returns) the next scripted outcome on each reconcile."""

    def __init__(self, outcomes: list[BaseException | Result | None]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    async def reconcile(self, request: Request) -> Result | None:
        outcome = self.outcomes[self.calls]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def sample(metric: str, controller: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(metric, {"controller": controller, **labels})
    return value or 0.0


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if cond():
                return
            await asyncio.sleep(0.005)


async def idle() -> None:
    """Give workers ample chance to run (nothing should be due)."""
    await asyncio.sleep(0.05)


def controller(reconciler: Scripted, clock: FakeClock) -> Controller:
    name = f"ctl-{uuid.uuid4().hex[:8]}"
    ctl = Controller(name, reconciler)
    # Same queue as the controller builds, on a clock the test drives (retries included).
    ctl.queue = WorkQueue(name, clock=clock, controller=name, metrics=False)
    return ctl


async def test_requeue_after_error_counts_an_error_forgets_backoff_and_waits_the_delay() -> None:
    clock = FakeClock()
    rec = Scripted(
        [
            RuntimeError("boom"),
            RuntimeError("boom"),
            RequeueAfterError(30, "node down"),
            None,
        ]
    )
    ctl = controller(rec, clock)
    name = ctl.name
    await ctl.start()
    try:
        ctl.queue.add(REQ)
        await until(lambda: rec.calls == 1)
        await until(lambda: ctl.queue.num_requeues(REQ) == 1)
        clock.advance(0.005)  # first backoff step: 5 ms
        await until(lambda: rec.calls == 2)
        await until(lambda: ctl.queue.num_requeues(REQ) == 2)
        clock.advance(0.010)  # second: 10 ms
        await until(lambda: rec.calls == 3)

        # The RequeueAfterError: counted as an error like the two before it...
        await until(lambda: sample("controller_runtime_reconcile_errors_total", name) == 3)
        assert sample("controller_runtime_reconcile_total", name, result="error") == 3
        assert sample("controller_runtime_reconcile_total", name, result="requeue_after") == 0
        # ...not as a panic (only the two RuntimeErrors are) nor as terminal...
        assert sample("controller_runtime_reconcile_panics_total", name) == 2
        assert sample("controller_runtime_terminal_reconcile_errors_total", name) == 0
        # ...with the failure backoff forgotten (it would be 20 ms next otherwise)...
        assert ctl.queue.num_requeues(REQ) == 0
        # ...and retried after exactly its own delay, not the backoff's.
        clock.advance(29.9)
        await idle()
        assert rec.calls == 3
        clock.advance(0.1)
        await until(lambda: rec.calls == 4)
        await until(
            lambda: sample("controller_runtime_reconcile_total", name, result="success") == 1
        )
        assert sample("controller_runtime_reconcile_errors_total", name) == 3
        clock.advance(3600)
        await idle()
        assert rec.calls == 4
    finally:
        await ctl.stop()
