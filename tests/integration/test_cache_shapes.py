"""What the cache keeps of objects, against a real API server: metadata-only informers,
per-resource transforms, shared strings and subtrees."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from nexus.runtime.cache import Cache
from nexus.runtime.client import Client
from nexus.runtime.informer import Informer
from nexus.runtime.resource import CONFIGMAPS
from nexus.runtime.transform import METADATA, FrozenDict, keep

pytestmark = pytest.mark.cluster


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


def cm(name: str, ns: str, color: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"color": color}},
        "data": {"payload": "x" * 200, "color": color},
    }


async def test_metadata_only_informer_lists_and_watches_metadata(
    kube: Client, namespace: str
) -> None:
    await kube.create(CONFIGMAPS, cm("before", namespace, "red"))
    inf = Informer(kube, CONFIGMAPS, namespace=namespace, metadata_only=True)
    inf.start()
    try:
        await inf.wait_for_sync()
        obj = inf.get("before", namespace)
        assert obj is not None
        assert obj["kind"] == "ConfigMap" and obj["apiVersion"] == "v1"
        assert obj["metadata"]["labels"] == {"color": "red"}
        assert "data" not in obj and "managedFields" not in obj["metadata"]
        await kube.patch(
            CONFIGMAPS, "before", {"metadata": {"labels": {"color": "blue"}}}, namespace
        )
        await kube.create(CONFIGMAPS, cm("after", namespace, "green"))
        await eventually(
            lambda: (
                (inf.get("before", namespace) or {}).get("metadata", {}).get("labels")
                == {"color": "blue"}
                and inf.get("after", namespace) is not None
            )
        )
        after = inf.get("after", namespace)
        assert after is not None and after["kind"] == "ConfigMap" and "data" not in after
        await kube.delete(CONFIGMAPS, "before", namespace)
        await eventually(lambda: inf.get("before", namespace) is None)
    finally:
        await inf.stop()


async def test_cache_configure_prunes_and_shares_through_one_pool(
    kube: Client, namespace: str
) -> None:
    for i, color in enumerate(("red", "red", "blue")):
        await kube.create(CONFIGMAPS, cm(f"cm-{i}", namespace, color))
    cache = Cache(kube)
    cache.configure(
        CONFIGMAPS,
        transform=keep({"metadata": METADATA, "data": {"color": True}}, cache.strings),
    )
    inf = cache.informer_for(CONFIGMAPS, namespace=namespace)
    cache.start()
    try:
        await cache.wait_for_sync(timeout=30)
        a, b, c = (cache.get(CONFIGMAPS, f"cm-{i}", namespace) for i in range(3))
        assert a is not None and b is not None and c is not None
        assert a["data"] == {"color": "red"} and c["data"] == {"color": "blue"}
        # One string object for equal values of different objects, one map for equal labels.
        assert a["data"]["color"] is b["data"]["color"]
        assert a["metadata"]["labels"] is b["metadata"]["labels"]
        assert isinstance(a["metadata"]["labels"], FrozenDict)
        assert a["metadata"]["uid"] != b["metadata"]["uid"]
        with pytest.raises(RuntimeError):
            cache.configure(CONFIGMAPS, metadata_only=True)  # its informer has started
        assert inf is cache.informer_for(CONFIGMAPS, namespace=namespace)
    finally:
        await cache.stop()


async def test_configure_reshapes_informers_declared_before_it(
    kube: Client, namespace: str
) -> None:
    await kube.create(CONFIGMAPS, cm("one", namespace, "red"))
    cache = Cache(kube)
    declared = cache.informer_for(CONFIGMAPS, namespace=namespace)
    cache.configure(CONFIGMAPS, metadata_only=True)
    cache.start()
    try:
        await cache.wait_for_sync(timeout=30)
        obj = declared.get("one", namespace)
        assert obj is not None and "data" not in obj
    finally:
        await cache.stop()
