"""The example operator, built only on nexus.runtime, against the real control plane."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client as k8s_client

from examples.configmap_mirror.operator import ENABLED_LABEL, FINALIZER, SOURCE_LABEL, build
from nexus.runtime import Manager, ManagerOptions
from nexus.runtime.client import Client
from nexus.runtime.resource import CONFIGMAPS, NAMESPACES

from .test_informer import eventually

pytestmark = pytest.mark.cluster


@pytest.fixture
async def mirror(api_client: k8s_client.ApiClient, namespace: str) -> AsyncIterator[Manager]:
    mgr = Manager(
        api_client,
        ManagerOptions(metrics_bind_address="0", health_probe_bind_address="127.0.0.1:0"),
    )
    build(mgr, namespace)
    await mgr.start()
    yield mgr
    await mgr.stop()


async def _labelled_namespace(kube: Client) -> str:
    name = f"m-{uuid.uuid4().hex[:8]}"
    await kube.create(
        NAMESPACES,
        {"metadata": {"name": name, "labels": {ENABLED_LABEL: "true", "nexus-test": "1"}}},
    )
    return name


async def test_mirror_operator_end_to_end(mirror: Manager, kube: Client, namespace: str) -> None:
    target1 = await _labelled_namespace(kube)
    await kube.create(
        CONFIGMAPS,
        {
            "metadata": {
                "name": "shared",
                "namespace": namespace,
                "labels": {SOURCE_LABEL: "true"},
            },
            "data": {"greeting": "hello"},
        },
    )

    async def copy_data(ns: str) -> dict[str, str] | None:
        obj = await kube.get_or_none(CONFIGMAPS, "shared", ns)
        return None if obj is None else obj.get("data")

    async def wait_data(ns: str, expected: dict[str, str] | None) -> None:
        for _ in range(200):
            if await copy_data(ns) == expected:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"copy in {ns}: {await copy_data(ns)!r} != {expected!r}")

    await wait_data(target1, {"greeting": "hello"})
    source = await kube.get(CONFIGMAPS, "shared", namespace)
    assert FINALIZER in source["metadata"]["finalizers"]

    # Source edits propagate.
    await kube.patch(CONFIGMAPS, "shared", {"data": {"greeting": "hi"}}, namespace)
    await wait_data(target1, {"greeting": "hi"})

    # A namespace labelled later gets a copy; unlabelling removes it.
    target2 = await _labelled_namespace(kube)
    await wait_data(target2, {"greeting": "hi"})
    await kube.patch(NAMESPACES, target2, {"metadata": {"labels": {ENABLED_LABEL: None}}})
    await wait_data(target2, None)

    # Drift: a deleted copy is recreated, an edited one restored.
    await kube.delete(CONFIGMAPS, "shared", target1)
    await wait_data(target1, {"greeting": "hi"})
    await kube.patch(CONFIGMAPS, "shared", {"data": {"greeting": "tampered"}}, target1)
    await wait_data(target1, {"greeting": "hi"})

    # Deleting the source removes the copies, then the finalizer.
    await kube.delete(CONFIGMAPS, "shared", namespace)
    await wait_data(target1, None)
    await eventually(lambda: mirror.cache.get(CONFIGMAPS, "shared", namespace) is None, 10)
    for ns in (target1, target2):
        await kube.delete(NAMESPACES, ns)
