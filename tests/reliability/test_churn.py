"""Case 9: churn of 5,000 short-lived objects leaves no per-key state behind.

ConfigMaps with generated names are created and deleted through the API while an informer and
a controller (``nexus.runtime`` only, in this process) follow them. The reconciler asks for a
rate-limited retry once per object, so the rate limiter tracks every key for a moment. Once
all objects are gone: the queue's per-item structures, the informer's store and every index,
and the rate limiter's failure map are empty again (the unbounded-map leaks of failure
mode 10).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.runtime import Builder, ControllerOptions, Manager, ManagerOptions, Request, Result
from nexus.runtime.client import Client
from nexus.runtime.informer import NAMESPACE_INDEX
from nexus.runtime.resource import CONFIGMAPS

from ..support.faults import bounded, eventually

pytestmark = pytest.mark.cluster

OBJECTS = 5000
CONCURRENCY = 48
BY_COLOR = "by-color"
LABEL = "churn"


class RetryOnce:
    """Asks for a rate-limited retry the first time it sees a live object, then succeeds."""

    def __init__(self, mgr: Manager) -> None:
        self.cache = mgr.cache
        self.retried: set[str] = set()
        self.reconciles = 0

    async def reconcile(self, request: Request) -> Result | None:
        self.reconciles += 1
        obj = self.cache.get(CONFIGMAPS, request.name, request.namespace)
        if obj is None:
            self.retried.discard(request.name)  # the test's own bookkeeping shrinks too
            return None
        if request.name not in self.retried:
            self.retried.add(request.name)
            return Result(requeue=True)
        return None


async def test_churn_of_5000_objects_leaves_no_per_key_state(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str
) -> None:
    mgr = Manager(
        api_client,
        ManagerOptions(metrics_bind_address="0", health_probe_bind_address="0"),
    )
    # Only ours: kube-controller-manager puts a kube-root-ca.crt ConfigMap in every namespace.
    informer = mgr.cache.informer_for(CONFIGMAPS, namespace=namespace, label_selector=LABEL)
    informer.add_indexer(BY_COLOR, lambda o: [(o.get("data") or {}).get("color", "none")])
    reconciler = RetryOnce(mgr)
    controller = (
        Builder(mgr)
        .named(f"churn-{namespace}")
        .for_(CONFIGMAPS, namespace=namespace, label_selector=LABEL)
        .with_options(ControllerOptions(max_concurrent_reconciles=4))
        .complete(reconciler)
    )
    await mgr.start()
    writer = Client(api_client)
    try:

        async def churn(i: int) -> None:
            body: dict[str, Any] = {
                "metadata": {
                    "generateName": "churn-",
                    "namespace": namespace,
                    "labels": {LABEL: "1"},
                },
                "data": {"color": f"c{i % 50}"},
            }
            created = await writer.create(CONFIGMAPS, body)
            await asyncio.sleep(0.05)  # live long enough to be seen and reconciled, mostly
            await writer.delete(CONFIGMAPS, created["metadata"]["name"], namespace)

        await bounded(range(OBJECTS), churn, CONCURRENCY)

        def empty() -> bool:
            return (
                len(informer) == 0
                and all(v == 0 for v in controller.queue.sizes().values())
                and all(v == 0 for v in informer.index_sizes().values())
            )

        await eventually(
            empty,
            timeout=30,
            message=lambda: (
                f"store={len(informer)} queue={controller.queue.sizes()} "
                f"indexes={informer.index_sizes()}"
            ),
        )
        assert reconciler.reconciles >= OBJECTS  # the churn really went through the queue
        assert informer.index_sizes() == {NAMESPACE_INDEX: 0, BY_COLOR: 0}
        assert len(controller.queue.rate_limiter) == 0  # type: ignore[arg-type]
        assert not reconciler.retried
        server, _ = await kube.list_all(CONFIGMAPS, namespace, label_selector=LABEL)
        assert server == []
    finally:
        await mgr.stop()
        await writer.close()
        gc.collect()
