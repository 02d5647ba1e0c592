"""Leader election over a ``coordination.k8s.io/v1`` Lease (client-go's ``tools/leaderelection``).

Candidates race for one Lease object. Every write carries the resourceVersion it was based on,
so the API server lets exactly one of two concurrent writers win. Expiry is judged on each
candidate's own monotonic clock, from the moment it saw the Lease record last change, never by
comparing the holder's wall-clock ``renewTime`` with ours: clocks of different machines may
disagree, but they tick at (nearly) the same rate.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import math
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import aiohttp
import structlog

from nexus.runtime import metrics
from nexus.runtime.client import ApiError, Client
from nexus.runtime.resource import LEASES

__all__ = ["JITTER_FACTOR", "LeaderElectionConfig", "LeaderElectionLost", "LeaderElector"]

log = structlog.get_logger("nexus.leader_election")

#: client-go's ``JitterFactor``: candidates wait retry_period * (1 + random() * 1.2) between
#: attempts, so a crowd of standbys does not hit the API server in lockstep.
JITTER_FACTOR = 1.2

# What a failed API call can raise besides cancellation: API errors, socket errors and
# timeouts (OSError), aiohttp errors while reading a body, and undecodable JSON (ValueError).
_CALL_ERRORS = (ApiError, OSError, aiohttp.ClientError, ValueError)


def _default_identity() -> str:
    # The uuid keeps two processes on one host (or a restarted pod reusing its hostname)
    # from mistaking each other's lease for their own.
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def _micro_time() -> str:
    """Now as a ``metav1.MicroTime``: RFC 3339 in UTC with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaderElectionConfig:
    """Timings and identity of one candidate; defaults are controller-runtime's.

    Guarantees, checked at construction (``ValueError`` otherwise): names and identity are
    non-empty and ``lease_duration > renew_deadline > JITTER_FACTOR * retry_period > 0``.
    The first inequality is what prevents split brain: a leader gives up after
    ``renew_deadline`` without a successful renewal, before any standby may consider the
    lease expired. The second leaves room for at least one jittered retry before giving up.
    """

    lease_name: str
    lease_namespace: str
    #: Written to ``spec.holderIdentity``; must be unique among the candidates.
    identity: str = field(default_factory=_default_identity)
    #: How long standbys wait, after they last saw the lease change, before taking it over.
    lease_duration: float = 15.0
    #: How long a leader keeps trying to renew before it gives up leadership.
    renew_deadline: float = 10.0
    #: Pause between attempts to acquire or renew.
    retry_period: float = 2.0
    #: On cancellation of :meth:`LeaderElector.run`, hand the lease back so a standby takes
    #: over within about one retry period instead of one lease duration.
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        for name in ("lease_name", "lease_namespace", "identity"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for name in ("lease_duration", "renew_deadline", "retry_period"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(
                f"lease_duration ({self.lease_duration}) must be greater than renew_deadline "
                f"({self.renew_deadline}), or a leader that cannot renew could still be acting "
                "when a standby takes over"
            )
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError(
                f"renew_deadline ({self.renew_deadline}) must be greater than "
                f"{JITTER_FACTOR} * retry_period ({self.retry_period})"
            )

    @property
    def lease_duration_seconds(self) -> int:
        """``spec.leaseDurationSeconds``: rounded up, so standbys never wait less than asked."""
        return math.ceil(self.lease_duration)

    @property
    def call_timeout(self) -> float:
        """Time box of one API call (controller-runtime: the client timeout is half the
        renew deadline), so a hung connection cannot eat a whole renew deadline."""
        return max(self.renew_deadline / 2, 1.0)


class LeaderElectionLost(Exception):
    """Raised by :meth:`LeaderElector.run` once leadership is lost without being given up.

    By then the leader's work has been cancelled and ``on_stopped_leading`` has run. As in
    controller-runtime, the process is expected to exit (non-zero) rather than campaign again
    with state built while it was leader.
    """


class _Attempt(enum.Enum):
    ACQUIRED = "acquired"
    HELD_BY_OTHER = "held_by_other"
    FAILED = "failed"


class LeaderElector:
    """Campaigns for one Lease and runs a callback while holding it.

    Guarantees:

    - Never two leaders through this API: every Lease write is conditional on the
      resourceVersion it was computed from, so of concurrent writers one wins and the others
      get 409 and stay standby.
    - A leader that cannot renew stops leading (``is_leader`` false, gauge 0, work
      cancelled, ``on_stopped_leading`` awaited, :class:`LeaderElectionLost` raised) at the
      latest ``renew_deadline`` after it sent its last successful renewal. A standby takes
      over no earlier than ``lease_duration`` after it saw that renewal, which is later; the
      gap leaves the work ``lease_duration - renew_deadline`` seconds to obey cancellation.
    - A leader that finds the Lease held by another identity stops at once.
    - Cancelling :meth:`run` while leading cancels the work first and only then releases the
      Lease (with ``release_on_cancel``), so a standby takes over after about one retry period
      but never while the old work still runs. :meth:`run` is cancellable while acquiring too.
    - ``leader_election_master_status{name=<lease>}`` is 1 exactly while this process leads.
    """

    def __init__(self, client: Client, config: LeaderElectionConfig) -> None:
        self._client = client
        self._config = config
        self._log = log.bind(
            lease=f"{config.lease_namespace}/{config.lease_name}", identity=config.identity
        )
        # Last version of the Lease read or written, with the resourceVersion to write against.
        self._lease: dict[str, Any] | None = None
        # client-go's observedRecord/observedTime: the spec last seen and when (loop time)
        # it last changed. Expiry of another holder's lease is measured from that moment.
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._observed_leader: str | None = None
        # Loop time at which the last successful acquire/renew request was sent.
        self._renewed_at = 0.0
        self._leading = False
        self._running = False
        self._stop_requested = False
        self._work: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        # Create the series at 0, as client-go does, so dashboards see standbys too.
        metrics.LEADER_ELECTION_STATUS.labels(config.lease_name)

    @property
    def config(self) -> LeaderElectionConfig:
        return self._config

    @property
    def identity(self) -> str:
        return self._config.identity

    @property
    def is_leader(self) -> bool:
        """Whether this elector currently leads (its work is running or about to)."""
        return self._leading

    @property
    def observed_leader(self) -> str | None:
        """``holderIdentity`` of the Lease as last seen (None when free or never read)."""
        return self._observed_leader

    # -- public entry points ----------------------------------------------------------------

    async def run(
        self,
        on_started_leading: Callable[[], Awaitable[None]],
        on_stopped_leading: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Campaign until elected, then run ``on_started_leading`` in a task while renewing.

        Returns normally after :meth:`release`. Raises :class:`LeaderElectionLost` when
        leadership is lost, ``CancelledError`` when cancelled, and the work's own exception
        if ``on_started_leading`` fails (the lease is then released, as on cancellation).
        Work that returns normally does not end leadership. ``on_stopped_leading`` is
        awaited once after the work has stopped, whenever this elector had started leading.
        """
        if self._running:
            raise RuntimeError("LeaderElector.run() is already running")
        self._running = True
        self._stop_requested = False
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        try:
            if await self._acquire():
                await self._lead(on_started_leading, on_stopped_leading)
        finally:
            self._running = False
            self._work = None
            self._stopped.set()

    async def release(self) -> None:
        """Give leadership up now.

        While :meth:`run` is active, this stops it: the work is cancelled, the lease released,
        ``on_stopped_leading`` awaited, and ``run`` returns normally; ``release`` waits for all
        of that unless it is called from the work itself (which is being cancelled). Otherwise
        it hands the lease back if this identity still holds it (after a run that was
        cancelled with ``release_on_cancel=False``). Never raises API errors.
        """
        if self._running and self._wake is not None and self._stopped is not None:
            self._stop_requested = True
            self._wake.set()
            if self._work is not None and asyncio.current_task() is self._work:
                return
            await self._stopped.wait()
            return
        await self._release()

    # -- campaign ----------------------------------------------------------------------------

    async def _acquire(self) -> bool:
        cfg = self._config
        self._log.info("leader_election.attempting")
        while not self._stop_requested:
            if await self._try_acquire_or_renew(None) is _Attempt.ACQUIRED:
                return True
            await self._pause(cfg.retry_period * (1 + random.random() * JITTER_FACTOR))
        return False

    async def _lead(
        self,
        on_started_leading: Callable[[], Awaitable[None]],
        on_stopped_leading: Callable[[], Awaitable[None]] | None,
    ) -> None:
        cfg = self._config
        self._set_leading(True)
        self._log.info("leader_election.acquired", leader=cfg.identity)

        async def work_body() -> None:
            await on_started_leading()

        work = asyncio.create_task(work_body(), name=f"leader:{cfg.lease_name}")
        self._work = work
        wake = self._wake
        if wake is not None:
            work.add_done_callback(lambda _: wake.set())
        lost = False
        try:
            await self._renew_loop(work)
        except LeaderElectionLost:
            lost = True
            raise
        finally:
            # Stop acting as leader before anything else: after a loss the lease may
            # already be someone else's, and a release must not precede the work's end.
            self._set_leading(False)
            # After a loss run() raises LeaderElectionLost, so a failure of the work would
            # otherwise go unseen; otherwise run() re-raises it below.
            stopped = await self._stop_work(work, report_failure=lost)
            if not lost and stopped and (self._stop_requested or cfg.release_on_cancel):
                await self._release()
            if on_stopped_leading is not None:
                try:
                    await on_stopped_leading()
                except Exception:
                    self._log.exception("leader_election.on_stopped_leading_failed")
        if not work.cancelled() and (exc := work.exception()) is not None:
            raise exc

    async def _renew_loop(self, work: asyncio.Task[None]) -> None:
        """Renew every retry period until a stop is requested or the work fails."""
        while True:
            if self._stop_requested or _failed(work):
                return
            await self._pause(self._config.retry_period)
            if self._stop_requested or _failed(work):
                return
            await self._renew()

    async def _renew(self) -> None:
        cfg = self._config
        loop = asyncio.get_running_loop()
        # Measured from the last success rather than from this round's start (client-go),
        # so a leader always stops before lease_duration has passed since its last renewal
        # reached the server, whatever the retry period.
        deadline = self._renewed_at + cfg.renew_deadline
        while True:
            if loop.time() >= deadline:
                self._lose(
                    f"could not renew the lease within {cfg.renew_deadline}s",
                    since_renewal=round(loop.time() - self._renewed_at, 3),
                )
            result = await self._try_acquire_or_renew(deadline)
            if result is _Attempt.ACQUIRED:
                return
            if result is _Attempt.HELD_BY_OTHER:
                self._lose(f"the lease is held by {self._observed_leader!r}")
            await self._pause(min(cfg.retry_period, max(deadline - loop.time(), 0.0)))
            if self._stop_requested:
                return

    def _lose(self, reason: str, **extra: Any) -> NoReturn:
        self._set_leading(False)
        self._log.error("leader_election.lost", reason=reason, **extra)
        raise LeaderElectionLost(
            f"lost leadership of lease {self._config.lease_namespace}/"
            f"{self._config.lease_name}: {reason}"
        )

    async def _stop_work(self, work: asyncio.Task[None], *, report_failure: bool) -> bool:
        """Cancel the work; True once it has finished.

        ``report_failure`` logs an exception of the work, when nothing else will surface it.
        """
        # Work that outlives this margin may overlap with the next leader's.
        margin = self._config.lease_duration - self._config.renew_deadline
        if not work.done():
            work.cancel()
            await asyncio.wait({work}, timeout=margin)
        if not work.done():
            self._log.error("leader_election.work_not_stopped", waited=margin)
            return False
        if report_failure and not work.cancelled() and (exc := work.exception()) is not None:
            self._log.error("leader_election.work_failed", error=repr(exc))
        return True

    # -- one attempt ------------------------------------------------------------------------

    async def _try_acquire_or_renew(self, deadline: float | None) -> _Attempt:
        """client-go's tryAcquireOrRenew: one get-check-write round against the Lease."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        now = _micro_time()

        if self._leading and self._lease is not None:
            # Fast path: the leader writes against the version it wrote last; only when that
            # conflicts (or fails) does it read the lease again.
            old = self._lease.get("spec") or {}
            started = loop.time()
            try:
                lease = await self._call(
                    self._client.replace(LEASES, self._with_spec(self._lease, old, now, None)),
                    deadline,
                )
            except _CALL_ERRORS as exc:
                self._log.debug("leader_election.fast_renew_failed", error=_describe(exc))
            else:
                self._record_write(lease, started)
                return _Attempt.ACQUIRED

        try:
            current = await self._call(
                self._client.get_or_none(LEASES, cfg.lease_name, cfg.lease_namespace), deadline
            )
        except _CALL_ERRORS as exc:
            self._log.warning("leader_election.get_failed", error=_describe(exc))
            return _Attempt.FAILED

        if current is None:
            body = {
                "metadata": {"name": cfg.lease_name, "namespace": cfg.lease_namespace},
                "spec": self._spec({}, now, now, 0),
            }
            started = loop.time()
            try:
                created = await self._call(self._client.create(LEASES, body), deadline)
            except _CALL_ERRORS as exc:
                self._log_write_error("create", exc)
                return _Attempt.FAILED
            self._record_write(created, started)
            return _Attempt.ACQUIRED

        self._observe(current)
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != cfg.identity and not self._observed_expired(spec):
            return _Attempt.HELD_BY_OTHER

        started = loop.time()
        try:
            updated = await self._call(
                self._client.replace(LEASES, self._with_spec(current, spec, now, holder)),
                deadline,
            )
        except _CALL_ERRORS as exc:
            self._log_write_error("update", exc)
            return _Attempt.FAILED
        if holder != cfg.identity:
            self._log.info("leader_election.took_over", previous=holder or None)
        self._record_write(updated, started)
        return _Attempt.ACQUIRED

    def _spec(
        self, base: dict[str, Any], now: str, acquire_time: str, transitions: int
    ) -> dict[str, Any]:
        return {
            **base,
            "holderIdentity": self._config.identity,
            "leaseDurationSeconds": self._config.lease_duration_seconds,
            "acquireTime": acquire_time,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _with_spec(
        self, lease: dict[str, Any], spec: dict[str, Any], now: str, previous: str | None
    ) -> dict[str, Any]:
        """The lease rewritten for us, keeping its resourceVersion as the write precondition.

        ``previous`` is the holder being replaced; None means we are renewing our own term.
        """
        transitions = int(spec.get("leaseTransitions") or 0)
        if previous is None or previous == self._config.identity:
            new_spec = self._spec(spec, now, spec.get("acquireTime") or now, transitions)
        else:
            # Taking the lease from another holder (or a released lease) starts a new term.
            new_spec = self._spec(spec, now, now, transitions + 1)
        body = copy.deepcopy(lease)
        body["spec"] = new_spec
        return body

    def _observe(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        spec = lease.get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec = copy.deepcopy(spec)
            self._observed_at = asyncio.get_running_loop().time()
            holder = spec.get("holderIdentity") or None
            if holder != self._observed_leader:
                self._observed_leader = holder
                self._log.info("leader_election.new_leader", leader=holder)

    def _record_write(self, lease: dict[str, Any], started: float) -> None:
        self._observe(lease)
        self._renewed_at = started

    def _observed_expired(self, spec: dict[str, Any]) -> bool:
        duration = int(spec.get("leaseDurationSeconds") or 0)
        return self._observed_at + duration <= asyncio.get_running_loop().time()

    def _log_write_error(self, op: str, exc: BaseException) -> None:
        if isinstance(exc, ApiError) and exc.conflict:
            # Another candidate wrote first; the next round reads who.
            self._log.debug("leader_election.lost_race", op=op, error=_describe(exc))
        else:
            self._log.warning("leader_election.write_failed", op=op, error=_describe(exc))

    # -- release -----------------------------------------------------------------------------

    async def _release(self) -> bool:
        """Hand the lease back if we hold it: empty holder, 1 s duration (client-go)."""
        cfg = self._config
        lease = self._lease
        for attempt in range(2):
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != cfg.identity:
                return False
            now = _micro_time()
            body = copy.deepcopy(lease)
            body["spec"] = {
                **spec,
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": now,
                "renewTime": now,
            }
            try:
                released = await self._call(self._client.replace(LEASES, body), None)
            except ApiError as exc:
                if not exc.conflict or attempt:
                    self._log.warning("leader_election.release_failed", error=_describe(exc))
                    return False
                # Written since our last renewal: release only if it is still ours.
                try:
                    lease = await self._call(
                        self._client.get_or_none(LEASES, cfg.lease_name, cfg.lease_namespace),
                        None,
                    )
                except _CALL_ERRORS as get_exc:
                    self._log.warning("leader_election.release_failed", error=_describe(get_exc))
                    return False
                if lease is not None:
                    self._observe(lease)
            except _CALL_ERRORS as exc:
                self._log.warning("leader_election.release_failed", error=_describe(exc))
                return False
            else:
                self._observe(released)
                self._log.info("leader_election.released")
                return True
        return False

    # -- helpers -----------------------------------------------------------------------------

    async def _call[T](self, call: Coroutine[Any, Any, T], deadline: float | None) -> T:
        timeout = self._config.call_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - asyncio.get_running_loop().time())
        if timeout <= 0:
            call.close()
            raise TimeoutError("renew deadline reached")
        async with asyncio.timeout(timeout):
            return await call

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by a stop request or the work finishing.

        Callers re-check those conditions after every pause, and nothing can set the event
        between their check and the clear below (no await in between), so no wake-up is lost.
        """
        wake = self._wake
        if wake is None:
            await asyncio.sleep(seconds)
            return
        wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            pass

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        metrics.LEADER_ELECTION_STATUS.labels(self._config.lease_name).set(1 if leading else 0)


def _describe(exc: BaseException) -> str:
    # TimeoutError and some socket errors have an empty message.
    return str(exc) or type(exc).__name__


def _failed(work: asyncio.Task[None]) -> bool:
    return work.done() and (work.cancelled() or work.exception() is not None)
