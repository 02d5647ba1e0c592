"""Leader election against a real API server: one leader, fast hand-over, expiry, loss."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from kubernetes_asyncio import client as k8s_client
from prometheus_client import REGISTRY

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.leader_election import (
    LeaderElectionConfig,
    LeaderElectionLost,
    LeaderElector,
)
from nexus.runtime.resource import LEASES

pytestmark = pytest.mark.cluster

LEASE = 3.0
RENEW = 2.0
RETRY = 0.5
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _config(namespace: str, lease: str, name: str, **kw: object) -> LeaderElectionConfig:
    return LeaderElectionConfig(
        lease,
        namespace,
        identity=name,
        lease_duration=LEASE,
        renew_deadline=RENEW,
        retry_period=RETRY,
        **kw,  # type: ignore[arg-type]
    )


def _gauge(lease: str) -> float | None:
    return REGISTRY.get_sample_value("leader_election_master_status", {"name": lease})


@dataclass
class Candidate:
    """An elector plus what its callbacks saw, with loop timestamps."""

    elector: LeaderElector
    started_at: float | None = None
    work_cancelled_at: float | None = None
    stopped_at: float | None = None
    task: asyncio.Task[None] | None = None
    events: list[str] = field(default_factory=list)

    async def _work(self) -> None:
        self.started_at = time.monotonic()
        self.events.append("started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.work_cancelled_at = time.monotonic()
            self.events.append("work_cancelled")
            raise

    async def _stopped(self) -> None:
        self.stopped_at = time.monotonic()
        self.events.append("stopped")

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self._work, self._stopped))


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        with contextlib.suppress(BaseException):
            await task


async def _wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Wait until ``cond()``; returns the monotonic time it became true."""
    # Polled: is_leader and the callbacks' records are plain attributes, not events.
    async with asyncio.timeout(timeout):
        while True:
            if cond():
                return time.monotonic()
            await asyncio.sleep(step)


@contextlib.asynccontextmanager
async def _never_two_leaders(*electors: LeaderElector) -> AsyncIterator[list[float]]:
    """Sample ``is_leader`` every 50 ms; yields the list of times two electors led at once."""
    overlaps: list[float] = []

    async def sample() -> None:
        while True:
            if sum(e.is_leader for e in electors) > 1:
                overlaps.append(time.monotonic())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        yield overlaps
    finally:
        await _cancel(sampler)
    assert overlaps == [], "two electors were leader at the same time"


async def _two_candidates(
    kube: Client, namespace: str, lease: str, **kw: object
) -> tuple[Candidate, Candidate]:
    a = Candidate(LeaderElector(kube, _config(namespace, lease, "cand-a", **kw)))
    b = Candidate(LeaderElector(kube, _config(namespace, lease, "cand-b", **kw)))
    a.start()
    b.start()
    await _wait_for(lambda: a.elector.is_leader or b.elector.is_leader, LEASE + 2)
    return (a, b) if a.elector.is_leader else (b, a)


async def test_one_leader_then_fast_handover_on_release(kube: Client, namespace: str) -> None:
    lease_name = f"le-{uuid.uuid4().hex[:8]}"
    leader, standby = await _two_candidates(kube, namespace, lease_name)
    try:
        async with _never_two_leaders(leader.elector, standby.elector):
            await _wait_for(lambda: leader.started_at is not None, 2)
            lease = await kube.get(LEASES, lease_name, namespace)
            spec = lease["spec"]
            assert spec["holderIdentity"] == leader.elector.identity
            assert spec["leaseDurationSeconds"] == 3
            assert MICRO_TIME.match(spec["renewTime"]) and MICRO_TIME.match(spec["acquireTime"])
            assert _gauge(lease_name) == 1.0
            # The standby reads the lease on its next attempt and knows who leads.
            await _wait_for(lambda: standby.elector.observed_leader == leader.elector.identity, 3)
            assert not standby.elector.is_leader and standby.started_at is None

            # The leader keeps renewing: renewTime moves, the term (acquireTime) does not.
            await asyncio.sleep(2 * RETRY + 0.2)
            renewed = (await kube.get(LEASES, lease_name, namespace))["spec"]
            assert renewed["renewTime"] > spec["renewTime"]
            assert renewed["acquireTime"] == spec["acquireTime"]
            assert renewed["holderIdentity"] == leader.elector.identity

            cancelled_at = time.monotonic()
            assert leader.task is not None
            leader.task.cancel()
            took_over_at = await _wait_for(lambda: standby.elector.is_leader, LEASE + 2)
            handover = took_over_at - cancelled_at
            # Released: taken after one jittered retry (<= 2.2 * RETRY), not after LEASE.
            assert handover < LEASE - 0.5, handover
            await _wait_for(lambda: standby.started_at is not None, 1)
            with pytest.raises(asyncio.CancelledError):
                await leader.task
            assert leader.events == ["started", "work_cancelled", "stopped"]
            # The old work had stopped before the lease was handed back.
            assert leader.work_cancelled_at is not None and standby.started_at is not None
            assert leader.work_cancelled_at < standby.started_at
            final = (await kube.get(LEASES, lease_name, namespace))["spec"]
            assert final["holderIdentity"] == standby.elector.identity
            assert final["leaseTransitions"] == spec["leaseTransitions"] + 1
            assert final["leaseDurationSeconds"] == 3
            assert _gauge(lease_name) == 1.0
    finally:
        await _cancel(leader.task)
        await _cancel(standby.task)
    assert _gauge(lease_name) == 0.0


async def test_crashed_leader_is_replaced_only_after_expiry(kube: Client, namespace: str) -> None:
    lease_name = f"le-{uuid.uuid4().hex[:8]}"
    leader, standby = await _two_candidates(kube, namespace, lease_name, release_on_cancel=False)
    try:
        async with _never_two_leaders(leader.elector, standby.elector):
            await asyncio.sleep(2 * RETRY)  # let the standby see a few renewals
            assert leader.task is not None
            crashed_at = time.monotonic()
            leader.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader.task
            # The crashed process no longer reports itself as leader, the lease is untouched.
            assert _gauge(lease_name) == 0.0
            held = (await kube.get(LEASES, lease_name, namespace))["spec"]
            assert held["holderIdentity"] == leader.elector.identity
            assert held["leaseDurationSeconds"] == 3

            took_over_at = await _wait_for(lambda: standby.elector.is_leader, LEASE + 4)
            waited = took_over_at - crashed_at
            # The standby counts LEASE from when it saw the last renewal, at most one renew
            # period before the crash; then it notices on a jittered retry (<= 2.2 * RETRY)
            # after its own observation, which itself may lag the renewal by one such retry.
            assert waited >= LEASE - RETRY - 0.2, waited
            assert waited < LEASE + 2 * RETRY + 1.5, waited
            final = (await kube.get(LEASES, lease_name, namespace))["spec"]
            assert final["holderIdentity"] == standby.elector.identity
            assert final["leaseTransitions"] == held["leaseTransitions"] + 1
            assert final["acquireTime"] > held["acquireTime"]
    finally:
        await _cancel(leader.task)
        await _cancel(standby.task)


async def test_cancel_while_acquiring_leaves_the_lease_alone(kube: Client, namespace: str) -> None:
    lease_name = f"le-{uuid.uuid4().hex[:8]}"
    leader, standby = await _two_candidates(kube, namespace, lease_name)
    try:
        before = await kube.get(LEASES, lease_name, namespace)
        assert standby.task is not None
        t0 = time.monotonic()
        standby.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await standby.task
        assert time.monotonic() - t0 < 0.5
        assert standby.events == []  # never led, so never told it stopped
        after = await kube.get(LEASES, lease_name, namespace)
        assert after["spec"]["holderIdentity"] == before["spec"]["holderIdentity"]
        assert leader.elector.is_leader
    finally:
        await _cancel(leader.task)
        await _cancel(standby.task)


async def test_release_returns_run_and_frees_the_lease(kube: Client, namespace: str) -> None:
    lease_name = f"le-{uuid.uuid4().hex[:8]}"
    cand = Candidate(LeaderElector(kube, _config(namespace, lease_name, "solo")))
    cand.start()
    try:
        await _wait_for(lambda: cand.started_at is not None, LEASE)
        await cand.elector.release()
        assert cand.task is not None and cand.task.done()
        assert cand.task.exception() is None  # run() returned normally
        assert cand.events == ["started", "work_cancelled", "stopped"]
        spec = (await kube.get(LEASES, lease_name, namespace))["spec"]
        assert spec.get("holderIdentity", "") == ""
        assert spec["leaseDurationSeconds"] == 1
        assert not cand.elector.is_leader and cand.elector.observed_leader is None
        assert _gauge(lease_name) == 0.0
        # A released lease is free at once: a new candidate takes it on its first attempt.
        other = Candidate(LeaderElector(kube, _config(namespace, lease_name, "next")))
        other.start()
        try:
            await _wait_for(lambda: other.elector.is_leader, 1.0)
        finally:
            await _cancel(other.task)
    finally:
        await _cancel(cand.task)


async def test_failing_work_ends_run_with_its_error_and_releases(
    kube: Client, namespace: str
) -> None:
    lease_name = f"le-{uuid.uuid4().hex[:8]}"
    elector = LeaderElector(kube, _config(namespace, lease_name, "fails"))
    stopped = asyncio.Event()

    async def work() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("work broke")

    async def on_stopped() -> None:
        stopped.set()

    async with asyncio.timeout(LEASE + 3):
        with pytest.raises(RuntimeError, match="work broke"):
            await elector.run(work, on_stopped)
    assert stopped.is_set() and not elector.is_leader
    spec = (await kube.get(LEASES, lease_name, namespace))["spec"]
    assert spec.get("holderIdentity", "") == ""


async def test_stolen_lease_is_noticed_on_next_renewal(kube: Client, namespace: str) -> None:
    lease_name = f"le-{uuid.uuid4().hex[:8]}"
    cand = Candidate(LeaderElector(kube, _config(namespace, lease_name, "victim")))
    cand.start()
    assert cand.task is not None
    try:
        await _wait_for(lambda: cand.started_at is not None, LEASE)
        assert _gauge(lease_name) == 1.0
        # Another writer takes the lease the legitimate way: a conditional update.
        lease = await kube.get(LEASES, lease_name, namespace)
        lease["spec"].update(
            holderIdentity="thief",
            renewTime=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            leaseDurationSeconds=30,
            leaseTransitions=lease["spec"]["leaseTransitions"] + 1,
        )
        await kube.replace(LEASES, lease)
        stolen_at = time.monotonic()
        with pytest.raises(LeaderElectionLost, match="thief"):
            async with asyncio.timeout(RENEW + 2):
                await cand.task
        noticed = time.monotonic() - stolen_at
        # The next renewal conflicts, the re-read shows a live foreign holder: lost at once.
        assert noticed < RENEW, noticed
        assert cand.events == ["started", "work_cancelled", "stopped"]
        assert not cand.elector.is_leader
        assert cand.elector.observed_leader == "thief"
        assert _gauge(lease_name) == 0.0
        # The loser did not write over the thief.
        spec = (await kube.get(LEASES, lease_name, namespace))["spec"]
        assert spec["holderIdentity"] == "thief"
    finally:
        await _cancel(cand.task)


class BlackHoleProxy:
    """A TCP forwarder that can start swallowing all traffic, as a network partition does.

    Connections stay open but nothing gets through, so requests hang until their time box.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.partitioned = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.partitioned:
            await self._pipe(reader, None)
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.append(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if dst is not None and not self.partitioned:
                    dst.write(data)
                    await dst.drain()
        if dst is not None:
            dst.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def _client_through(proxy_port: int, envtest: Environment) -> AsyncIterator[Client]:
    cfg = await envtest.client_configuration()
    cfg.host = f"https://127.0.0.1:{proxy_port}"
    async with k8s_client.ApiClient(cfg) as api:
        yield Client(api)


async def test_partitioned_leader_stops_before_a_standby_can_take_over(
    envtest: Environment, kube: Client, namespace: str
) -> None:
    target = urlsplit((await envtest.client_configuration()).host)
    assert target.hostname and target.port
    proxy = BlackHoleProxy(target.hostname, target.port)
    port = await proxy.start()
    lease_name = f"le-{uuid.uuid4().hex[:8]}"
    standby: Candidate | None = None
    try:
        async with _client_through(port, envtest) as partitioned_client:
            leader = Candidate(
                LeaderElector(partitioned_client, _config(namespace, lease_name, "island"))
            )
            leader.start()
            assert leader.task is not None
            await _wait_for(lambda: leader.started_at is not None, LEASE)
            await asyncio.sleep(RETRY)  # a renewal or two through the proxy

            proxy.partitioned = True
            cut_at = time.monotonic()
            # A standby on the healthy path campaigns from the moment of the partition.
            standby = Candidate(LeaderElector(kube, _config(namespace, lease_name, "mainland")))
            standby.start()
            async with _never_two_leaders(leader.elector, standby.elector):
                with pytest.raises(LeaderElectionLost, match=r"within 2\.0s"):
                    async with asyncio.timeout(RENEW + 2):
                        await leader.task
                lost_after = time.monotonic() - cut_at
                # Each hung call is time-boxed, so the deadline is kept despite the black hole.
                assert lost_after <= RENEW + 0.3, lost_after
                assert leader.events == ["started", "work_cancelled", "stopped"]
                assert _gauge(lease_name) == 0.0

                await _wait_for(lambda: standby.started_at is not None, LEASE + 3)
            # No split brain: the old leader's work ended before the new leader's began,
            # with at least LEASE - RENEW to spare.
            assert leader.work_cancelled_at is not None and standby.started_at is not None
            assert standby.started_at - leader.work_cancelled_at >= LEASE - RENEW - RETRY
            spec = (await kube.get(LEASES, lease_name, namespace))["spec"]
            assert spec["holderIdentity"] == "mainland"
    finally:
        if standby is not None:
            await _cancel(standby.task)
        await proxy.close()


async def test_run_twice_concurrently_is_refused(kube: Client, namespace: str) -> None:
    elector = LeaderElector(kube, _config(namespace, f"le-{uuid.uuid4().hex[:8]}", "x"))

    async def never() -> None:
        await asyncio.Event().wait()

    first = asyncio.create_task(elector.run(never))
    await asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await elector.run(never)
    finally:
        await _cancel(first)
