"""The manager on a real API server: probes, readiness, metrics, shutdown, leader election."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.runtime import (
    Builder,
    CacheSyncTimeout,
    ControllerOptions,
    Manager,
    ManagerOptions,
    Request,
    Resource,
    Result,
)
from nexus.runtime.client import Client
from nexus.runtime.resource import CONFIGMAPS, LEASES

from .test_controller import unique
from .test_informer import cm, eventually

pytestmark = pytest.mark.cluster

MISSING = Resource("missing.example.io", "v1", "things", "Thing")


class Counting:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.finished: list[str] = []
        self.delay = delay

    async def reconcile(self, request: Request) -> Result | None:
        self.calls.append(request.name)
        await asyncio.sleep(self.delay)
        self.finished.append(request.name)
        return None


def local_options(**kw: object) -> ManagerOptions:
    base: dict[str, object] = {
        "metrics_bind_address": "127.0.0.1:0",
        "health_probe_bind_address": "127.0.0.1:0",
    }
    base.update(kw)
    return ManagerOptions(**base)  # type: ignore[arg-type]


async def fetch(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


async def test_readiness_fails_until_sync_and_stays_failing_on_timeout(
    api_client: k8s_client.ApiClient,
) -> None:
    mgr = Manager(api_client, local_options(cache_sync_timeout=2.0))
    Builder(mgr).named(unique("missing")).for_(MISSING).complete(Counting())
    start = asyncio.create_task(mgr.start())
    await eventually(lambda: "probes" in mgr.server_ports, 5)
    port = mgr.server_ports["probes"]
    assert (await fetch(port, "/healthz"))[0] == 200
    status, body = await fetch(port, "/readyz")
    assert status == 500
    assert "[-]informers failed: reason withheld" in body
    assert body.rstrip().endswith("readyz check failed")
    with pytest.raises(CacheSyncTimeout, match=r"things\.missing\.example\.io"):
        await start
    assert (await fetch(port, "/readyz"))[0] == 500  # stays failing after the timeout
    status, body = await fetch(port, "/readyz/informers")
    assert status == 500 and "caches not synced" in body
    await mgr.stop()


async def test_ready_after_sync_and_metrics_names(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str
) -> None:
    mgr = Manager(api_client, local_options())
    name = unique("metrics")
    rec = Counting()
    (
        Builder(mgr)
        .named(name)
        .for_(CONFIGMAPS, namespace=namespace)
        .with_options(ControllerOptions(max_concurrent_reconciles=3))
        .complete(rec)
    )
    await mgr.start()
    try:
        probes, metrics_port = mgr.server_ports["probes"], mgr.server_ports["metrics"]
        assert await fetch(probes, "/readyz") == (200, "ok")
        status, body = await fetch(probes, "/readyz?verbose")
        assert status == 200 and "[+]informers ok" in body and "readyz check passed" in body
        assert (await fetch(probes, "/healthz/ping")) == (200, "ok")
        assert (await fetch(probes, "/healthz/nope"))[0] == 404

        await kube.create(CONFIGMAPS, cm("m1", namespace))
        await eventually(lambda: "m1" in rec.finished, 5)
        status, text = await fetch(metrics_port, "/metrics")
        assert status == 200
        for metric in (
            "controller_runtime_reconcile_total",
            "controller_runtime_reconcile_errors_total",
            "controller_runtime_reconcile_time_seconds_bucket",
            "controller_runtime_max_concurrent_reconciles",
            "controller_runtime_active_workers",
            "workqueue_depth",
            "workqueue_adds_total",
            "workqueue_queue_duration_seconds_bucket",
            "workqueue_work_duration_seconds_bucket",
            "workqueue_retries_total",
            "workqueue_unfinished_work_seconds",
            "workqueue_longest_running_processor_seconds",
            "rest_client_requests_total",
        ):
            assert f"\n{metric}{{" in text, metric
        assert f'controller_runtime_max_concurrent_reconciles{{controller="{name}"}} 3.0' in text
        assert f'controller_runtime_reconcile_total{{controller="{name}",result="success"}}' in text
        for result in ("error", "requeue", "requeue_after"):  # pre-initialised series
            assert (
                f'controller_runtime_reconcile_total{{controller="{name}",result="{result}"}} 0.0'
                in text
            )
    finally:
        await mgr.stop()


async def test_graceful_stop_finishes_the_item_in_hand(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str
) -> None:
    mgr = Manager(api_client, local_options(graceful_shutdown_timeout=10.0))
    rec = Counting(delay=1.0)
    Builder(mgr).named(unique("graceful")).for_(CONFIGMAPS, namespace=namespace).complete(rec)
    await mgr.start()
    await kube.create(CONFIGMAPS, cm("slow", namespace))
    await eventually(lambda: "slow" in rec.calls, 5)
    started = time.monotonic()
    await mgr.stop()
    assert "slow" in rec.finished  # not cancelled mid-reconcile
    assert time.monotonic() - started < 5


async def test_run_stops_on_request_stop(api_client: k8s_client.ApiClient) -> None:
    mgr = Manager(api_client, local_options())
    task = asyncio.create_task(mgr.run(install_signal_handlers=False))
    await eventually(lambda: "probes" in mgr.server_ports and mgr.is_leader, 10)
    mgr.request_stop()
    await asyncio.wait_for(task, 10)
    assert mgr.server_ports == {}


async def test_two_managers_only_the_leader_reconciles_and_standby_takes_over(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str
) -> None:
    lease = "two-managers"

    def make(name: str) -> tuple[Manager, Counting]:
        mgr = Manager(
            api_client,
            local_options(
                leader_election=True,
                leader_election_id=lease,
                leader_election_namespace=namespace,
                # A quick retry makes the handover quick; the long renew deadline (each call
                # may take up to half of it) keeps a slow API server on a loaded machine from
                # costing the first manager its lease before the test stops it.
                lease_duration=6.0,
                renew_deadline=4.0,
                retry_period=0.5,
            ),
        )
        rec = Counting()
        Builder(mgr).named(unique(name)).for_(CONFIGMAPS, namespace=namespace).complete(rec)
        return mgr, rec

    (a, rec_a), (b, rec_b) = make("le-a"), make("le-b")
    try:
        await a.start()
        await eventually(lambda: a.is_leader, 5, "first manager leads")
        await b.start()
        await kube.create(CONFIGMAPS, cm("one", namespace))
        await eventually(lambda: "one" in rec_a.finished, 5)
        await asyncio.sleep(1.0)  # the standby has read the Lease, more than once
        assert not b.is_leader
        assert "one" not in rec_b.calls  # the standby's controllers never ran
        # Readiness does not depend on leadership: the standby's caches are warm.
        assert (await fetch(b.server_ports["probes"], "/readyz"))[0] == 200
        held = (await kube.get(LEASES, lease, namespace))["spec"]
        assert a.is_leader  # still: it renewed all along

        await a.stop()  # graceful: the Lease is released
        # Released, not left to expire: right after the stop the Lease is free (or already
        # the standby's). Read rather than timed: when the standby notices depends on its
        # jittered retry (up to retry_period * 2.2) and on the load of the machine, while
        # an unreleased Lease would still name the old leader here for seconds.
        released = (await kube.get(LEASES, lease, namespace))["spec"]
        assert released["holderIdentity"] != held["holderIdentity"], released
        await eventually(lambda: b.is_leader, 10, "standby takes over")
        taken = (await kube.get(LEASES, lease, namespace))["spec"]
        assert taken["holderIdentity"] not in ("", held["holderIdentity"])
        assert taken["leaseTransitions"] == held["leaseTransitions"] + 1

        await kube.create(CONFIGMAPS, cm("two", namespace))
        await eventually(lambda: "two" in rec_b.finished, 5)
        assert "two" not in rec_a.calls
    finally:
        await a.stop()
        await b.stop()
