"""Controllers on a real API server: retries, requeue, exclusivity, priorities, finalizers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client
from prometheus_client import REGISTRY

from nexus.runtime import (
    Builder,
    ControllerOptions,
    Manager,
    ManagerOptions,
    Request,
    Result,
    add_finalizer,
    remove_finalizer,
)
from nexus.runtime.client import Client
from nexus.runtime.predicates import GenerationChanged
from nexus.runtime.ratelimiter import ItemExponentialFailureRateLimiter
from nexus.runtime.resource import CONFIGMAPS

from ..conftest import WIDGETS
from .test_informer import cm, eventually

pytestmark = pytest.mark.cluster

_counter = iter(range(10**6))


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{time.monotonic_ns() % 10**6}"


class Scripted:
    """A reconciler whose behaviour per call is scripted by the test."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.in_flight: set[str] = set()
        self.overlaps = 0
        self.fail_first: dict[str, int] = {}
        self.requeue_after: float | None = None
        self.delay = delay

    async def reconcile(self, request: Request) -> Result | None:
        if request.key in self.in_flight:
            self.overlaps += 1
        self.in_flight.add(request.key)
        try:
            self.calls.append(request.name)
            if self.delay:
                await asyncio.sleep(self.delay)
            left = self.fail_first.get(request.name, 0)
            if left:
                self.fail_first[request.name] = left - 1
                raise RuntimeError("scripted failure")
            if self.requeue_after:
                return Result(requeue_after=self.requeue_after)
            return None
        finally:
            self.in_flight.discard(request.key)


@pytest.fixture
async def manager(api_client: k8s_client.ApiClient) -> AsyncIterator[Manager]:
    mgr = Manager(
        api_client,
        ManagerOptions(metrics_bind_address="0", health_probe_bind_address="0"),
    )
    yield mgr
    await mgr.stop()


def metric(metric_name: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric_name, labels) or 0.0


async def test_errors_retry_with_backoff_then_succeed(
    manager: Manager, kube: Client, namespace: str
) -> None:
    name = unique("retry")
    rec = Scripted()
    rec.fail_first["x"] = 3
    (
        Builder(manager)
        .named(name)
        .for_(CONFIGMAPS, namespace=namespace)
        .with_options(ControllerOptions(rate_limiter=ItemExponentialFailureRateLimiter(0.05, 1.0)))
        .complete(rec)
    )
    await manager.start()
    await kube.create(CONFIGMAPS, cm("x", namespace))
    await eventually(lambda: rec.calls.count("x") == 4, 10, "3 failures then success")
    assert metric("controller_runtime_reconcile_errors_total", controller=name) == 3
    assert metric("controller_runtime_reconcile_total", controller=name, result="error") == 3
    # Every key succeeds once: "x" after its failures, and kube-root-ca.crt, which
    # kube-controller-manager adds to each namespace, whenever it appears.
    assert metric("controller_runtime_reconcile_total", controller=name, result="success") == len(
        set(rec.calls)
    )
    assert metric("workqueue_retries_total", name=name, controller=name) >= 3
    await asyncio.sleep(0.5)
    assert rec.calls.count("x") == 4  # success forgets: no further retries


async def test_requeue_after_reschedules(manager: Manager, kube: Client, namespace: str) -> None:
    rec = Scripted()
    rec.requeue_after = 0.2
    Builder(manager).named(unique("requeue")).for_(CONFIGMAPS, namespace=namespace).complete(rec)
    await manager.start()
    await kube.create(CONFIGMAPS, cm("periodic", namespace))
    await eventually(lambda: rec.calls.count("periodic") >= 4, 5, "periodic reconciles")


async def test_a_key_is_never_reconciled_concurrently(
    manager: Manager, kube: Client, namespace: str
) -> None:
    rec = Scripted(delay=0.03)
    (
        Builder(manager)
        .named(unique("exclusive"))
        .for_(CONFIGMAPS, namespace=namespace)
        .with_options(ControllerOptions(max_concurrent_reconciles=8))
        .complete(rec)
    )
    await manager.start()
    names = [f"k{i}" for i in range(4)]
    for n in names:
        await kube.create(CONFIGMAPS, cm(n, namespace))

    async def hammer(n: str) -> None:
        for i in range(15):
            await kube.patch(CONFIGMAPS, n, {"data": {"i": str(i)}}, namespace)

    await asyncio.gather(*(hammer(n) for n in names))
    await eventually(lambda: not rec.in_flight, 10)
    await asyncio.sleep(0.2)
    assert rec.overlaps == 0
    counts = Counter(rec.calls)
    # Updates coalesce while a key waits or runs, but the last change is always reconciled.
    assert all(1 <= counts[n] <= 16 for n in names), counts
    assert sum(counts.values()) < 4 * 16


async def test_live_changes_overtake_the_initial_list(
    manager: Manager, kube: Client, namespace: str
) -> None:
    for i in range(150):
        await kube.create(CONFIGMAPS, cm(f"old-{i:03}", namespace))
    rec = Scripted(delay=0.01)
    Builder(manager).named(unique("prio")).for_(CONFIGMAPS, namespace=namespace).complete(rec)
    await manager.start()
    await kube.create(CONFIGMAPS, cm("fresh", namespace))
    await eventually(lambda: "fresh" in rec.calls, 10)
    position = rec.calls.index("fresh")
    assert position < 60, f"the live change waited behind {position} initial-list items"
    # (kube-controller-manager also adds kube-root-ca.crt to every namespace)
    wanted = {f"old-{i:03}" for i in range(150)}
    await eventually(lambda: wanted <= set(rec.calls), 20, "every initial item too")


async def test_predicates_filter_status_only_updates(
    manager: Manager, kube: Client, namespace: str
) -> None:
    rec = Scripted()
    (
        Builder(manager)
        .named(unique("gen"))
        .for_(WIDGETS, GenerationChanged(), namespace=namespace)
        .complete(rec)
    )
    await manager.start()
    await kube.create(WIDGETS, {"metadata": {"name": "g", "namespace": namespace}})
    await eventually(lambda: rec.calls.count("g") == 1, 5)
    await kube.patch_status(WIDGETS, "g", {"phase": "Busy"}, namespace)
    await asyncio.sleep(0.5)
    assert rec.calls.count("g") == 1  # status writes do not bump the generation
    await kube.patch(WIDGETS, "g", {"spec": {"size": 2}}, namespace)
    await eventually(lambda: rec.calls.count("g") == 2, 5)


async def test_owned_children_map_to_their_owner(
    manager: Manager, kube: Client, namespace: str
) -> None:
    rec = Scripted()
    (
        Builder(manager)
        .named(unique("owns"))
        .for_(WIDGETS, namespace=namespace)
        .owns(CONFIGMAPS, namespace=namespace)
        .complete(rec)
    )
    await manager.start()
    owner = await kube.create(WIDGETS, {"metadata": {"name": "parent", "namespace": namespace}})
    await eventually(lambda: rec.calls.count("parent") == 1, 5)
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": "Widget",
        "name": "parent",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    child: dict[str, Any] = cm("child", namespace)
    child["metadata"]["ownerReferences"] = [ref]
    await kube.create(CONFIGMAPS, child)
    await eventually(lambda: rec.calls.count("parent") == 2, 5, "child event -> owner")
    assert "child" not in rec.calls


async def test_foreign_finalizer_survives_add_and_remove(kube: Client, namespace: str) -> None:
    await kube.create(CONFIGMAPS, cm("fin", namespace))
    obj = await kube.get(CONFIGMAPS, "fin", namespace)
    stale = obj
    obj = await add_finalizer(kube, CONFIGMAPS, obj, "ours.example.io/cleanup")
    # Another controller adds its own finalizer; we still hold the stale copy.
    await kube.patch(
        CONFIGMAPS,
        "fin",
        {"metadata": {"finalizers": [*obj["metadata"]["finalizers"], "theirs.example.io/keep"]}},
        namespace,
    )
    # Adding from a stale copy must neither fail nor drop theirs.
    obj = await add_finalizer(kube, CONFIGMAPS, stale, "ours.example.io/cleanup")
    assert obj["metadata"]["finalizers"] == ["ours.example.io/cleanup", "theirs.example.io/keep"]
    # Removing ours from a stale copy in which ours is at another index keeps theirs.
    stale_after = {
        **obj,
        "metadata": {**obj["metadata"], "finalizers": ["x", *obj["metadata"]["finalizers"]]},
    }
    result = await remove_finalizer(kube, CONFIGMAPS, stale_after, "ours.example.io/cleanup")
    assert result is not None
    assert result["metadata"]["finalizers"] == ["theirs.example.io/keep"]
    # Deletion waits for their finalizer.
    await kube.delete(CONFIGMAPS, "fin", namespace)
    still = await kube.get(CONFIGMAPS, "fin", namespace)
    assert still["metadata"]["deletionTimestamp"]
    await remove_finalizer(kube, CONFIGMAPS, still, "theirs.example.io/keep")
    assert await kube.get_or_none(CONFIGMAPS, "fin", namespace) is None
