"""Informers against a real API server: sync, events, 410 relist, restarts, silent streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.informer import Informer, InformerOptions
from nexus.runtime.resource import CONFIGMAPS

from ..support.tcpproxy import TcpProxy

pytestmark = pytest.mark.cluster


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool]] = []

    def on_add(self, obj: dict[str, Any], initial: bool) -> None:
        self.events.append(("add", obj["metadata"]["name"], initial))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"], False))

    def on_delete(self, obj: dict[str, Any], final_state_unknown: bool) -> None:
        self.events.append(("delete", obj["metadata"]["name"], final_state_unknown))


async def eventually(cond: Callable[[], bool], timeout: float = 10.0, msg: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {msg}")
        await asyncio.sleep(0.05)


def cm(name: str, ns: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "data": data or {}}


async def cache_equals_server(inf: Informer, kube: Client, ns: str) -> bool:
    items, _ = await kube.list_all(CONFIGMAPS, ns)
    server = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}
    cached = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in inf.list(ns)}
    return server == cached


async def test_sync_events_indexes_and_managed_fields(kube: Client, namespace: str) -> None:
    await kube.create(CONFIGMAPS, cm("before", namespace, {"k": "v"}))
    inf = Informer(kube, CONFIGMAPS, namespace=namespace)
    inf.add_indexer("by-color", lambda o: [(o.get("data") or {}).get("color", "none")])
    rec = Recorder()
    inf.add_event_handler(rec)
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_for_sync(), 10)
        assert ("add", "before", True) in rec.events
        cached = inf.get("before", namespace)
        assert cached is not None and "managedFields" not in cached["metadata"]

        await kube.create(CONFIGMAPS, cm("live", namespace, {"color": "red"}))
        await eventually(lambda: ("add", "live", False) in rec.events, msg="live add")
        assert [o["metadata"]["name"] for o in inf.by_index("by-color", "red")] == ["live"]

        await kube.patch(CONFIGMAPS, "live", {"data": {"color": "blue"}}, namespace)
        await eventually(lambda: ("update", "live", False) in rec.events, msg="update")
        await eventually(lambda: bool(inf.by_index("by-color", "blue")), msg="reindex")
        assert inf.by_index("by-color", "red") == []

        await kube.delete(CONFIGMAPS, "live", namespace)
        await eventually(lambda: ("delete", "live", False) in rec.events, msg="delete")
        assert inf.get("live", namespace) is None
        assert "blue" not in inf.index_keys("by-color", "blue")
        assert await cache_equals_server(inf, kube, namespace)

        late = Recorder()
        inf.add_event_handler(late)
        assert ("add", "before", True) in late.events
    finally:
        await inf.stop()


async def test_label_selector_scopes_the_informer(kube: Client, namespace: str) -> None:
    await kube.create(
        CONFIGMAPS, {"metadata": {"name": "a", "namespace": namespace, "labels": {"x": "1"}}}
    )
    await kube.create(CONFIGMAPS, cm("b", namespace))
    inf = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector="x=1")
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_for_sync(), 10)
        assert [o["metadata"]["name"] for o in inf.list()] == ["a"]
    finally:
        await inf.stop()


@pytest.fixture
async def private_env() -> AsyncIterator[Environment]:
    # Own control plane: these tests restart the API server or compact etcd. The watch cache is
    # off so that a compacted resourceVersion reaches etcd and yields 410, as on a busy cluster.
    async with Environment(extra_apiserver_flags=["--watch-cache=false"]) as env:
        yield env


async def _proxied_client(env: Environment, proxy: TcpProxy) -> k8s_client.ApiClient:
    cfg = await env.client_configuration()
    cfg.host = proxy.url
    return k8s_client.ApiClient(cfg)


async def test_gone_after_compaction_relists_and_converges(private_env: Environment) -> None:
    port = int(private_env.host.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    async with (
        await private_env.api_client() as admin_api,
        await _proxied_client(private_env, proxy) as api,
    ):
        admin = Client(admin_api)
        for i in range(5):
            await admin.create(CONFIGMAPS, cm(f"c{i}", "default"))
        inf = Informer(
            Client(api),
            CONFIGMAPS,
            namespace="default",
            options=InformerOptions(backoff_initial=0.05, backoff_cap=0.2),
        )
        rec = Recorder()
        inf.add_event_handler(rec)
        inf.start()
        try:
            await asyncio.wait_for(inf.wait_for_sync(), 10)
            proxy.cut()  # the informer is disconnected from here on
            await admin.delete(CONFIGMAPS, "c0", "default")
            await admin.patch(CONFIGMAPS, "c1", {"data": {"v": "2"}}, "default")
            await admin.create(CONFIGMAPS, cm("new", "default"))
            for i in range(20):  # move the revision well past what the informer holds
                await admin.create(CONFIGMAPS, cm(f"churn{i}", "default"))
                await admin.delete(CONFIGMAPS, f"churn{i}", "default")
            await private_env.compact_etcd()
            proxy.restore()
            await eventually(lambda: inf.stats["relists_gone"] >= 1, 15, "relist after 410")
            await eventually(lambda: inf.get("new", "default") is not None, 10, "new object")
            assert await cache_equals_server(inf, admin, "default")
            assert ("delete", "c0", True) in rec.events  # tombstone from the relist
            assert ("update", "c1", False) in rec.events
        finally:
            await inf.stop()
            await proxy.stop()


async def test_apiserver_restart_misses_no_update(private_env: Environment) -> None:
    async with await private_env.api_client() as api:
        kube = Client(api)
        inf = Informer(
            kube,
            CONFIGMAPS,
            namespace="default",
            options=InformerOptions(backoff_initial=0.1, backoff_cap=0.5),
        )
        inf.start()
        try:
            await asyncio.wait_for(inf.wait_for_sync(), 10)
            await kube.create(CONFIGMAPS, cm("r0", "default"))
            await eventually(lambda: inf.get("r0", "default") is not None)
            await private_env.stop_apiserver(kill=True)
            # Writes while the API server is down cannot happen through it; write right after
            # it is back, before the informer has necessarily reconnected.
            await private_env.start_apiserver()
            await kube.patch(CONFIGMAPS, "r0", {"data": {"after": "restart"}}, "default")
            await kube.create(CONFIGMAPS, cm("r1", "default"))
            await eventually(lambda: inf.get("r1", "default") is not None, 20, "r1 after restart")
            await eventually(
                lambda: (inf.get("r0", "default") or {}).get("data") == {"after": "restart"},
                10,
                "r0 update after restart",
            )
            assert await cache_equals_server(inf, kube, "default")
            assert inf.stats["watches"] >= 2
        finally:
            await inf.stop()


async def test_silent_stream_is_detected_and_reconnected(
    envtest: Environment, kube: Client, namespace: str
) -> None:
    port = int(envtest.host.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    async with await _proxied_client(envtest, proxy) as api:
        inf = Informer(
            Client(api),
            CONFIGMAPS,
            namespace=namespace,
            options=InformerOptions(idle_timeout=2.0),
        )
        inf.start()
        try:
            await asyncio.wait_for(inf.wait_for_sync(), 10)
            await asyncio.sleep(0.3)  # let the watch open
            proxy.blackhole()  # sockets stay open, nothing flows
            await kube.create(CONFIGMAPS, cm("during-silence", namespace))
            start = time.monotonic()
            await eventually(
                lambda: inf.get("during-silence", namespace) is not None, 10, "change applied"
            )
            took = time.monotonic() - start
            assert inf.stats["idle_reconnects"] >= 1
            assert took < 2.0 + 3.0, took
        finally:
            await inf.stop()
            await proxy.stop()
