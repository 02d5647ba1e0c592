"""A poison object on a real API server: a handler, predicate or mapping function that raises
on one object must not stall the shared informer, its other handlers or the other controllers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s_client
from prometheus_client import REGISTRY

from nexus.runtime import Builder, Manager, ManagerOptions, Request, Result
from nexus.runtime.client import Client
from nexus.runtime.handler import enqueue_for_object
from nexus.runtime.resource import CONFIGMAPS

from .test_controller import unique
from .test_informer import Recorder, cm, eventually

pytestmark = pytest.mark.cluster

POISON = "poison"
Object = dict[str, Any]


def _check(obj: Object) -> None:
    if obj["metadata"]["name"] == POISON:
        raise ValueError("this object breaks the handler")


class Explodes:
    """A predicate that raises on the poison object, for every kind of event."""

    def create(self, obj: Object) -> bool:
        _check(obj)
        return True

    def update(self, old: Object, new: Object) -> bool:
        _check(new)
        return True

    def delete(self, obj: Object) -> bool:
        _check(obj)
        return True


def exploding_mapper(obj: Object) -> Iterable[Request]:
    _check(obj)
    return enqueue_for_object(obj)


class Names:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    async def reconcile(self, request: Request) -> Result | None:
        self.seen.add(request.name)
        return None


def handler_errors(handler: str, event: str) -> float:
    labels = {"resource": "configmaps", "handler": handler, "event": event}
    return REGISTRY.get_sample_value("informer_handler_errors_total", labels) or 0.0


async def test_a_raising_handler_does_not_stop_the_informer_or_its_other_handlers(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str
) -> None:
    # The poison object sits in the middle of the initial list.
    for name in ("a", POISON, "b"):
        await kube.create(CONFIGMAPS, cm(name, namespace))
    mgr = Manager(
        api_client,
        ManagerOptions(metrics_bind_address="127.0.0.1:0", health_probe_bind_address="127.0.0.1:0"),
    )
    bad_name, good_name = unique("poisoned"), unique("healthy")
    bad, good = Names(), Names()
    # Two handlers of the poisoned controller raise: its predicate and its mapping function.
    (
        Builder(mgr)
        .named(bad_name)
        .for_(CONFIGMAPS, Explodes(), namespace=namespace)
        .watches(CONFIGMAPS, exploding_mapper, namespace=namespace)
        .complete(bad)
    )
    Builder(mgr).named(good_name).for_(CONFIGMAPS, namespace=namespace).complete(good)
    informer = mgr.cache.informer_for(CONFIGMAPS, namespace=namespace)
    rec = Recorder()
    informer.add_event_handler(rec)
    assert len(mgr.cache.informers) == 1  # all three share one informer

    # The cache syncs: start() returns only after it has, and would time out otherwise.
    async with asyncio.timeout(20):
        await mgr.start()
    try:
        assert informer.has_synced
        assert {"a", POISON, "b"} <= {o["metadata"]["name"] for o in informer.list()}
        for name in ("a", POISON, "b"):
            assert ("add", name, True) in rec.events
        assert handler_errors(bad_name, "add") == 2

        # The watch goes on: poison changes, new objects, deletions still reach everyone.
        await kube.patch(CONFIGMAPS, POISON, {"data": {"k": "v"}}, namespace)
        await kube.create(CONFIGMAPS, cm("c", namespace))
        await kube.delete(CONFIGMAPS, POISON, namespace)
        await kube.patch(CONFIGMAPS, "a", {"data": {"k": "v"}}, namespace)
        await eventually(lambda: ("update", "a", False) in rec.events, 10, "update of a")
        for event in [("update", POISON, False), ("add", "c", False), ("delete", POISON, False)]:
            assert event in rec.events
        assert informer.get(POISON, namespace) is None

        # Each poison event failed once per raising handler, and was not replayed.
        await eventually(lambda: {"a", "b", "c"} <= bad.seen, 10, "poisoned controller")
        await eventually(lambda: {"a", POISON, "b", "c"} <= good.seen, 10, "healthy controller")
        assert POISON not in bad.seen
        for event in ("add", "update", "delete"):
            assert handler_errors(bad_name, event) == 2, event
            assert handler_errors(good_name, event) == 0, event
        assert informer.stats["lists"] == 1
        assert informer.last_error is None and informer.running

        # Exposed on /metrics for alerting.
        port = mgr.server_ports["metrics"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
        assert (
            f'informer_handler_errors_total{{event="delete",handler="{bad_name}",'
            f'resource="configmaps"}} 2.0' in text
        )
    finally:
        await mgr.stop()
