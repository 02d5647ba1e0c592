"""Case 7: two `nexus manager` processes with leader election; the leader is stopped, then
killed. The standby takes over fast after a graceful stop (the Lease is released) and within
the lease duration after a kill; at no sampled moment do two processes lead.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from nexus.domain.resources import TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import LEASES

from ..support.faults import NexusManager, eventually, phase_of, tenant_body
from .conftest import make_system_namespace, purge, short_id

pytestmark = pytest.mark.cluster

LEASE, RENEW, RETRY = 4.0, 3.0, 0.5
SAMPLE_EVERY = 0.1


@dataclass
class Sample:
    at: float
    leading: dict[str, bool]
    holder: str


@dataclass
class Sampler:
    """Reads every manager's leader gauge and the Lease holder every 100 ms."""

    kube: Client
    lease: str
    namespace: str
    managers: dict[str, NexusManager] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    async def leads(self, mgr: NexusManager) -> bool:
        try:
            m = await mgr.metrics()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False  # not serving (stopped, killed or not started): not leading
        return m.value("leader_election_master_status", name=self.lease) == 1.0

    async def run(self) -> None:
        while True:
            names = list(self.managers)
            gauges = await asyncio.gather(*(self.leads(self.managers[n]) for n in names))
            lease = await self.kube.get_or_none(LEASES, self.lease, self.namespace)
            holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
            self.samples.append(
                Sample(time.monotonic(), dict(zip(names, gauges, strict=True)), holder)
            )
            await asyncio.sleep(SAMPLE_EVERY)

    def overlaps(self) -> list[Sample]:
        """Samples in which more than one process reported leading."""
        return [s for s in self.samples if sum(s.leading.values()) > 1]

    async def wait_leader(self, name: str, timeout: float) -> float:
        """Wait until ``name`` reports leading; returns when that was first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.samples:
                if s.leading.get(name):
                    return s.at
            await asyncio.sleep(0.02)
        raise AssertionError(f"{name} did not lead within {timeout}s")


def identity(mgr: NexusManager) -> str:
    for line in mgr.log_lines("leader_election.attempting"):
        return str(json.loads(line)["identity"])
    raise AssertionError(f"no leader election in the log: {mgr.log_tail()}")


async def test_failover_on_sigterm_and_sigkill_without_split_brain(
    envtest: Environment, kube: Client, tmp_path: Path
) -> None:
    system_ns = await make_system_namespace(kube, "failover")
    uid = short_id()
    lease_name = f"nexus-{uid}"

    def manager(tag: str) -> NexusManager:
        return NexusManager(
            envtest.kubeconfig_path,
            tmp_path / tag,
            extra=[
                f"--namespace={system_ns}",
                "--leader-elect",
                f"--leader-election-id={lease_name}",
                f"--lease-duration={LEASE}",
                f"--renew-deadline={RENEW}",
                f"--retry-period={RETRY}",
            ],
        )

    async def ready_tenant(name: str) -> None:
        await kube.create(TENANTS, tenant_body(name, system_ns))
        await eventually(
            lambda: _is_ready(kube, name, system_ns), timeout=20, message=f"{name} Ready"
        )

    a, b, c = manager("a"), manager("b"), manager("c")
    sampler = Sampler(kube, lease_name, system_ns, {"a": a, "b": b, "c": c})
    sampling: asyncio.Task[None] | None = None
    try:
        await a.start()
        sampling = asyncio.create_task(sampler.run())
        await sampler.wait_leader("a", LEASE + 5)
        await b.start()
        await ready_tenant(f"f{uid}-one")

        # Graceful stop: the Lease is released, the standby takes over at once.
        stopped_at = time.monotonic()
        stop_a = asyncio.create_task(a.stop(signal.SIGTERM))
        took = await sampler.wait_leader("b", 10) - stopped_at
        assert await stop_a == 0, a.log_tail()
        assert not sampler.overlaps(), f"two leaders at once: {sampler.overlaps()[:3]}"
        print(f"standby led {took:.2f}s after SIGTERM")
        assert took < 2.0, f"standby led {took:.2f}s after SIGTERM"
        await ready_tenant(f"f{uid}-two")

        # Kill: nobody releases; the standby waits out the lease, no longer.
        await c.start()
        await asyncio.sleep(2 * RETRY)  # c has read the Lease
        killed_at = time.monotonic()
        await b.stop(signal.SIGKILL)
        took = await sampler.wait_leader("c", LEASE + 10) - killed_at
        assert not sampler.overlaps(), f"two leaders at once: {sampler.overlaps()[:3]}"
        print(f"standby led {took:.2f}s after SIGKILL (lease {LEASE}s)")
        assert LEASE - 1.5 < took < LEASE + 1.5, f"standby led {took:.2f}s after SIGKILL"
        await ready_tenant(f"f{uid}-three")
        await asyncio.sleep(5 * SAMPLE_EVERY)
    finally:
        if sampling is not None:
            sampling.cancel()
        codes = [await m.stop() for m in (a, b, c)]
        await purge(kube, system_ns)
    assert codes[2] == 0, c.log_tail()

    assert not sampler.overlaps(), f"two leaders at once: {sampler.overlaps()[:3]}"
    # The holder changes only at the two failovers: a, then b, then c (a released Lease has an
    # empty holder in between).
    holders = [s.holder for s in sampler.samples if s.holder]
    changes = [h for i, h in enumerate(holders) if i == 0 or h != holders[i - 1]]
    assert changes == [identity(a), identity(b), identity(c)], changes
    assert len(sampler.samples) > 50


async def _is_ready(kube: Client, name: str, ns: str) -> bool:
    return phase_of(await kube.get_or_none(TENANTS, name, ns)) == "Ready"
