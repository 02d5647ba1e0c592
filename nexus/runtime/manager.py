"""Manager: owns the client, the shared cache, controllers, probes, metrics and leadership."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from kubernetes_asyncio import client as k8s_client

from nexus.runtime.cache import Cache, CacheSyncTimeout
from nexus.runtime.client import Client
from nexus.runtime.controller import Controller
from nexus.runtime.events import EventRecorder
from nexus.runtime.healthz import (
    Checker,
    HttpServer,
    ProbeHandler,
    metrics_app,
    parse_bind_address,
    ping,
    probe_app,
)
from nexus.runtime.informer import InformerOptions, Transform
from nexus.runtime.leader_election import LeaderElectionConfig, LeaderElectionLost, LeaderElector

log = structlog.get_logger("nexus.manager")


class Runnable(Protocol):
    """Anything the manager starts and stops: controllers, servers, background loops.

    ``start`` returns once the runnable is running; ``stop`` returns once it has stopped.
    Runnables with ``need_leader_election`` run only on the elected leader.
    """

    @property
    def need_leader_election(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class ManagerOptions:
    """Manager settings; defaults follow controller-runtime / kubebuilder scaffolding."""

    #: Prometheus ``/metrics``; "0" disables.
    metrics_bind_address: str = ":9090"
    #: ``/healthz`` and ``/readyz``; "0" disables.
    health_probe_bind_address: str = ":8081"
    leader_election: bool = False
    leader_election_id: str = ""
    leader_election_namespace: str = "default"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: Release the Lease on shutdown so a standby takes over at once.
    leader_election_release_on_cancel: bool = True
    #: Time given to runnables to stop after SIGTERM (controller-runtime: 30 s).
    graceful_shutdown_timeout: float = 30.0
    #: Readiness fails, and controllers do not start, if caches take longer (2 min).
    cache_sync_timeout: float = 120.0
    informer: InformerOptions = field(default_factory=InformerOptions)
    #: Applied to every cached object; default strips managedFields.
    cache_transform: Transform | None = None


class Manager:
    """Runs controllers and other runnables with shared dependencies.

    Start order (as controller-runtime): probe and metrics servers, runnables that do not need
    leadership (e.g. an API server), the caches (on standbys too, so a new leader starts warm),
    wait for the caches to sync, then leader election, then controllers and other leader-only
    runnables. Stop order: leader-only runnables (workers finish their current item), the
    others, the Lease is released, caches, servers; all within ``graceful_shutdown_timeout``.

    Guarantees: readiness (``/readyz``) is false until every cache has synced, and stays false
    if the sync times out; with leader election, controllers run in at most one process, and a
    process that cannot renew its lease stops leading before the lease expires and exits with
    :class:`LeaderElectionLost`.
    """

    def __init__(
        self, api_client: k8s_client.ApiClient, options: ManagerOptions | None = None
    ) -> None:
        self.options = options or ManagerOptions()
        self.api_client = api_client
        self.client = Client(api_client)
        self.cache = Cache(
            self.client, options=self.options.informer, transform=self.options.cache_transform
        )
        self.controllers: list[Controller] = []
        self._runnables: list[Runnable] = []
        self.healthz = ProbeHandler("healthz")
        self.readyz = ProbeHandler("readyz")
        self.healthz.add("ping", ping)
        self.readyz.add("informers", self._check_cache_synced)
        self.healthz.add("informers", self._check_informers_alive)
        self._sync_error: str | None = None
        self._stop = asyncio.Event()
        self._servers: list[HttpServer] = []
        self._leader_started: list[Runnable] = []
        self._others_started: list[Runnable] = []
        self._elector: LeaderElector | None = None
        self._elector_task: asyncio.Task[None] | None = None
        self._recorders: dict[str, EventRecorder] = {}
        self._error: BaseException | None = None
        self._leading = asyncio.Event()

    # -- wiring -----------------------------------------------------------------------------

    def add(self, runnable: Runnable) -> None:
        if isinstance(runnable, Controller):
            self.controllers.append(runnable)
        self._runnables.append(runnable)

    def add_healthz_check(self, name: str, check: Checker) -> None:
        self.healthz.add(name, check)

    def add_readyz_check(self, name: str, check: Checker) -> None:
        self.readyz.add(name, check)

    def event_recorder(self, name: str) -> EventRecorder:
        """An events.k8s.io recorder reporting as ``name`` (one per name)."""
        rec = self._recorders.get(name)
        if rec is None:
            rec = self._recorders[name] = EventRecorder(self.client, name)
        return rec

    @property
    def server_ports(self) -> dict[str, int]:
        """Bound ports by server name ("metrics", "probes"), known after start."""
        return {s.name: s.port for s in self._servers if s.port is not None}

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    # -- probes -----------------------------------------------------------------------------

    def _check_cache_synced(self) -> str | None:
        if self._sync_error:
            return self._sync_error
        if not self.cache.has_synced:
            return "caches not synced yet"
        return None

    def _check_informers_alive(self) -> str | None:
        # A dead watch task would leave a zombie operator that looks alive (kopf #1145).
        dead = [str(i.resource) for i in self.cache.informers if not i.running]
        if dead and not self._stop.is_set():
            return f"informers not running: {', '.join(dead)}"
        return None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; returns once controllers run (or leadership is being sought)."""
        probes = parse_bind_address(self.options.health_probe_bind_address)
        if probes is not None:
            self._servers.append(HttpServer("probes", probe_app(self.healthz, self.readyz), probes))
        metrics_bind = parse_bind_address(self.options.metrics_bind_address)
        if metrics_bind is not None:
            self._servers.append(HttpServer("metrics", metrics_app(), metrics_bind))
        for server in self._servers:
            await server.start()
        for r in self._runnables:
            if not r.need_leader_election:
                await r.start()
                self._others_started.append(r)
        self.cache.start()
        try:
            await self.cache.wait_for_sync(self.options.cache_sync_timeout)
        except CacheSyncTimeout as exc:
            self._sync_error = str(exc)
            log.error("manager.cache_sync_timeout", error=str(exc))
            raise
        log.info("manager.caches_synced", informers=len(self.cache.informers))
        if self.options.leader_election:
            if not self.options.leader_election_id:
                raise ValueError("leader_election_id is required with leader election")
            self._elector = LeaderElector(
                self.client,
                LeaderElectionConfig(
                    lease_name=self.options.leader_election_id,
                    lease_namespace=self.options.leader_election_namespace,
                    lease_duration=self.options.lease_duration,
                    renew_deadline=self.options.renew_deadline,
                    retry_period=self.options.retry_period,
                    release_on_cancel=self.options.leader_election_release_on_cancel,
                ),
            )
            self._elector_task = asyncio.create_task(
                self._elector.run(self._start_leading, self._stop_leading),
                name="leader-election",
            )
            self._elector_task.add_done_callback(self._elector_done)
        else:
            await self._start_leading()

    async def _start_leading(self) -> None:
        for r in self._runnables:
            if r.need_leader_election:
                await r.start()
                self._leader_started.append(r)
        self._leading.set()

    async def _stop_leading(self) -> None:
        self._leading.clear()
        await self._stop_runnables(self._leader_started)

    def _elector_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._error = exc
            log.error("manager.leader_election_ended", error=str(exc))
            self._stop.set()

    def request_stop(self) -> None:
        """Ask a running :meth:`run` to stop gracefully (what SIGTERM does)."""
        self._stop.set()

    async def wait_leading(self) -> None:
        await self._leading.wait()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Start, run until SIGTERM/SIGINT or :meth:`request_stop`, then stop gracefully.

        Raises :class:`LeaderElectionLost` if leadership was lost (exit non-zero so that the
        process is restarted cleanly, as controller-runtime does).
        """
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            start = asyncio.create_task(self.start())
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if start in done:
                start.result()  # surface start-up errors
                await stop_wait
            else:
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await start
        finally:
            await self.stop()
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        if isinstance(self._error, LeaderElectionLost):
            raise self._error

    async def stop(self) -> None:
        """Graceful stop in controller-runtime's order, bounded by the shutdown timeout."""
        self._stop.set()
        try:
            async with asyncio.timeout(self.options.graceful_shutdown_timeout):
                await self._stop_runnables(self._leader_started)
                self._leading.clear()
                if self._elector_task is not None and not self._elector_task.done():
                    # Cancelling the elector releases the Lease (release_on_cancel).
                    self._elector_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self._elector_task
                await self._stop_runnables(self._others_started)
                await asyncio.gather(*(r.flush() for r in self._recorders.values()))
        except TimeoutError:
            log.error(
                "manager.graceful_shutdown_timeout",
                timeout=self.options.graceful_shutdown_timeout,
            )
        await self.cache.stop()
        for server in reversed(self._servers):
            await server.stop()
        self._servers.clear()
        await self.client.close()
        log.info("manager.stopped")

    async def _stop_runnables(self, started: list[Runnable]) -> None:
        while started:
            await started.pop().stop()
