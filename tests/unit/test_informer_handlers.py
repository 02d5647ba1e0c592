"""Informer handler isolation: a handler that raises cannot stall the list, the watch or the
other handlers (client-go's processorListener), and every such error is counted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import REGISTRY

from nexus.runtime.controller import Controller
from nexus.runtime.handler import enqueue_for_object
from nexus.runtime.informer import Informer
from nexus.runtime.reconcile import Request, Result
from nexus.runtime.resource import Resource

Object = dict[str, Any]


def cm(name: str, rv: str) -> Object:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


class ScriptedClient:
    """Lists ``items`` once, then serves the queued watch events; a watch stays open
    (silent) once the queue is empty, as a real watch between events does."""

    def __init__(self, items: list[Object]) -> None:
        self.items = items
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.lists = 0

    async def list_all(self, *args: Any, **kwargs: Any) -> tuple[list[Object], str]:
        self.lists += 1
        return [dict(i) for i in self.items], "100"

    async def watch_batches(self, *args: Any, **kwargs: Any) -> AsyncIterator[list[dict[str, Any]]]:
        while True:
            yield [await self.events.get()]


class Recorder:
    def __init__(self, name: str = "", poison: str | None = None) -> None:
        self.name = name
        self.poison = poison
        self.seen: list[tuple[str, str]] = []

    def _see(self, kind: str, obj: Object) -> None:
        name = obj["metadata"]["name"]
        if name == self.poison:
            raise ValueError(f"cannot handle {name}")
        self.seen.append((kind, name))

    def on_add(self, obj: Object, initial: bool) -> None:
        self._see("add", obj)

    def on_update(self, old: Object, new: Object) -> None:
        self._see("update", new)

    def on_delete(self, obj: Object, final_state_unknown: bool) -> None:
        self._see("delete", obj)


def errors(resource: Resource, handler: str, event: str) -> float:
    value = REGISTRY.get_sample_value(
        "informer_handler_errors_total",
        {"resource": str(resource), "handler": handler, "event": event},
    )
    return value or 0.0


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if cond():
                return
            await asyncio.sleep(0.005)


def resource() -> Resource:
    # A fresh plural per test keeps the metric's series apart.
    return Resource("test.nexus.io", "v1", f"things{uuid.uuid4().hex[:8]}", "Thing")


async def test_a_raising_handler_does_not_stall_the_list_the_watch_or_its_peers() -> None:
    res = resource()
    client = ScriptedClient([cm("a", "1"), cm("poison", "2"), cm("b", "3")])
    inf = Informer(client, res)  # type: ignore[arg-type]
    bad, good = Recorder("bad", poison="poison"), Recorder("good")
    inf.add_event_handler(bad)
    inf.add_event_handler(good)
    inf.start()
    try:
        # The initial list completes although a handler raised in the middle of it.
        await asyncio.wait_for(inf.wait_for_sync(), 5)
        assert good.seen == [("add", "a"), ("add", "poison"), ("add", "b")]
        assert bad.seen == [("add", "a"), ("add", "b")]
        assert inf.get("poison", "ns") is not None
        assert errors(res, "bad", "add") == 1

        # The watch keeps going through poison events of every kind.
        for kind, obj in [
            ("MODIFIED", cm("poison", "4")),
            ("ADDED", cm("c", "5")),
            ("DELETED", cm("poison", "6")),
            ("MODIFIED", cm("a", "7")),
        ]:
            client.events.put_nowait({"type": kind, "object": obj})
        await until(lambda: ("update", "a") in good.seen)
        assert good.seen[3:] == [
            ("update", "poison"),
            ("add", "c"),
            ("delete", "poison"),
            ("update", "a"),
        ]
        assert bad.seen[2:] == [("add", "c"), ("update", "a")]
        assert errors(res, "bad", "update") == 1
        assert errors(res, "bad", "delete") == 1
        assert inf.get("poison", "ns") is None
        assert inf.resource_version == "7"
        # Nothing was retried: one list, one watch, the same event never replayed.
        assert client.lists == 1
        assert inf.stats["watches"] == 1
        assert inf.stats["handler_errors"] == 3
        assert inf.last_error is None
        assert inf.running
        assert errors(res, "good", "add") == 0
    finally:
        await inf.stop()


async def test_a_late_handler_that_raises_on_replay_still_gets_the_other_objects() -> None:
    res = resource()
    inf = Informer(ScriptedClient([cm("poison", "1"), cm("a", "2")]), res)  # type: ignore[arg-type]
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_for_sync(), 5)
        late = Recorder(poison="poison")  # unnamed: labelled by its class
        inf.add_event_handler(late)
        assert late.seen == [("add", "a")]
        assert errors(res, "Recorder", "add") == 1
    finally:
        await inf.stop()


async def test_a_raising_mapper_is_counted_under_its_controller_and_spares_the_others() -> None:
    res = resource()
    name = f"ctl-{uuid.uuid4().hex[:8]}"

    class Noop:
        async def reconcile(self, request: Request) -> Result | None:
            return None

    def mapper(obj: Object) -> list[Request]:
        if obj["metadata"]["name"] == "poison":
            raise KeyError("spec")
        return list(enqueue_for_object(obj))

    inf = Informer(ScriptedClient([cm("poison", "1"), cm("a", "2")]), res)  # type: ignore[arg-type]
    ctl = Controller(name, Noop())
    ctl.watch(inf, mapper)
    peer = Recorder("peer")
    inf.add_event_handler(peer)
    inf.start()
    try:
        await asyncio.wait_for(inf.wait_for_sync(), 5)
        assert errors(res, name, "add") == 1
        assert peer.seen == [("add", "poison"), ("add", "a")]
        assert ctl.queue.get_nowait() == Request("a", "ns")
        assert len(ctl.queue) == 0
    finally:
        await inf.stop()
        ctl.queue.shutdown()
