"""OwnWrites on a real API server: a reconciler's own write does not wake it again, and
anybody else's write still does."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.runtime import (
    Builder,
    ControllerOptions,
    Manager,
    ManagerOptions,
    OwnWrites,
    RecordingClient,
    Request,
    Result,
)
from nexus.runtime.client import Client
from nexus.runtime.resource import CONFIGMAPS

from .test_informer import cm, eventually

pytestmark = pytest.mark.cluster

#: Long enough for any echo of a write to have arrived and been handled.
SETTLE = 1.5


class Stamping:
    """Stamps each ConfigMap with an annotation once (a write to the object it watches)."""

    def __init__(self, client: Client | RecordingClient, manager: Manager) -> None:
        self.client = client
        self.manager = manager
        self.passes: Counter[str] = Counter()

    async def reconcile(self, request: Request) -> Result | None:
        self.passes[request.name] += 1
        obj = self.manager.cache.get(CONFIGMAPS, request.name, request.namespace)
        if obj is None:
            return None
        meta = obj["metadata"]
        if "stamped" not in (meta.get("annotations") or {}):
            # Guarded by the version it was decided on: only such a write's echo is known.
            patch = {
                "metadata": {
                    "annotations": {"stamped": "yes"},
                    "resourceVersion": meta["resourceVersion"],
                }
            }
            await self.client.patch(CONFIGMAPS, request.name, patch, request.namespace)
        return None


@pytest.fixture
async def manager(api_client: k8s_client.ApiClient) -> AsyncIterator[Manager]:
    mgr = Manager(
        api_client,
        ManagerOptions(metrics_bind_address="0", health_probe_bind_address="0"),
    )
    yield mgr
    await mgr.stop()


async def run(manager: Manager, kube: Client, namespace: str, *, own: bool) -> Counter[str]:
    writes = OwnWrites()
    rec = Stamping(writes.writer(manager.client) if own else manager.client, manager)
    (
        Builder(manager)
        .named(f"stamp-{'own' if own else 'all'}")
        .for_(CONFIGMAPS, namespace=namespace)
        .with_options(ControllerOptions(own_writes=writes if own else None))
        .complete(rec)
    )
    await manager.start()
    await kube.create(CONFIGMAPS, cm("a", namespace))
    await eventually(lambda: rec.passes["a"] >= 1, msg="never reconciled")
    await asyncio.sleep(SETTLE)
    stamped = await kube.get(CONFIGMAPS, "a", namespace)
    assert stamped["metadata"]["annotations"]["stamped"] == "yes"
    after_create = rec.passes["a"]

    # Somebody else's write wakes it, own writes or not.
    await kube.patch(CONFIGMAPS, "a", {"data": {"k": "v"}}, namespace)
    await eventually(lambda: rec.passes["a"] > after_create, msg="a foreign write was missed")
    await asyncio.sleep(SETTLE)
    return Counter(created=after_create, after_foreign=rec.passes["a"] - after_create)


async def test_without_own_writes_the_echo_costs_a_second_pass(
    manager: Manager, kube: Client, namespace: str
) -> None:
    passes = await run(manager, kube, namespace, own=False)
    # The create wakes it; its own patch's echo wakes it once more (the pass finds it stamped).
    assert passes == Counter(created=2, after_foreign=1)


async def test_with_own_writes_one_pass_per_change(
    manager: Manager, kube: Client, namespace: str
) -> None:
    passes = await run(manager, kube, namespace, own=True)
    assert passes == Counter(created=1, after_foreign=1)
