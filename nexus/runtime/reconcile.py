"""The reconcile contract: Request in, Result out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Request:
    """Names the object to reconcile. Only the name: read the current state from the cache."""

    name: str
    namespace: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def from_key(cls, key: str) -> Request:
        ns, sep, name = key.partition("/")
        return cls(name=name, namespace=ns) if sep else cls(name=ns)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class Result:
    """What to do after a successful reconcile.

    ``requeue_after`` (seconds) schedules the request again after that delay and resets its
    failure backoff; ``requeue=True`` requeues it through the rate limiter. Both are ignored
    when ``reconcile`` raises: errors are always retried with exponential backoff.
    """

    requeue_after: float | None = None
    requeue: bool = False


class Reconciler(Protocol):
    """Drives one object towards its desired state.

    Guarantees given by the controller: a request is never reconciled by two workers at once;
    events that arrive while it is being reconciled cause exactly one more reconcile afterwards.
    Reconcile must be idempotent: it may run any number of times for the same state.
    """

    async def reconcile(self, request: Request) -> Result | None: ...


class TerminalError(Exception):
    """A reconcile error that retrying cannot fix; it is counted but not requeued."""


class RequeueAfterError(Exception):
    """A failed reconcile that should be retried after a fixed delay, not the backoff.

    For failures whose retry cadence is part of the API contract (for example "a Failed
    object is retried every 30 s"). The controller counts it in
    ``controller_runtime_reconcile_errors_total`` (result label ``error``) so that alerts see
    the outage, resets the request's failure backoff and schedules it ``requeue_after``
    seconds later. Raise it after writing whatever status explains the failure.
    """

    def __init__(self, requeue_after: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {requeue_after:g}s")
        self.requeue_after = requeue_after
        self.reason = reason
