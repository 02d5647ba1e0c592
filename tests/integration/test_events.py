"""EventRecorder against a real API server: Events written, repeats folded, failures contained."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.runtime.client import Client
from nexus.runtime.clock import FakeClock
from nexus.runtime.envtest import Environment, free_port
from nexus.runtime.events import EventRecorder
from nexus.runtime.resource import CONFIGMAPS, EVENTS, NAMESPACES

pytestmark = pytest.mark.cluster

MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


async def _configmap(kube: Client, namespace: str, name: str = "cm") -> dict[str, Any]:
    return await kube.create(CONFIGMAPS, {"metadata": {"name": name, "namespace": namespace}})


async def _events_about(kube: Client, namespace: str, uid: str) -> list[dict[str, Any]]:
    items, _ = await kube.list_all(EVENTS, namespace)
    return [e for e in items if (e.get("regarding") or {}).get("uid") == uid]


async def test_event_is_written_with_reference_and_fields(kube: Client, namespace: str) -> None:
    cm = await _configmap(kube, namespace)
    recorder = EventRecorder(kube, "nexus.io/test-controller")
    recorder.normal(cm, "Synced", "configmap synced")
    await recorder.flush()
    assert recorder.in_flight == 0

    items, _ = await kube.list_all(EVENTS, namespace)
    assert len(items) == 1
    ev = items[0]
    meta = cm["metadata"]
    assert ev["regarding"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "cm",
        "namespace": namespace,
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
    }
    assert (ev["type"], ev["reason"], ev["note"], ev["action"]) == (
        "Normal",
        "Synced",
        "configmap synced",
        "Synced",
    )
    assert ev["reportingController"] == "nexus.io/test-controller"
    assert ev["reportingInstance"] == socket.gethostname()[:128]
    assert MICRO_TIME.match(ev["eventTime"])
    assert ev["metadata"]["name"].startswith("cm.")
    assert "series" not in ev


async def test_warning_with_explicit_action_and_instance(kube: Client, namespace: str) -> None:
    cm = await _configmap(kube, namespace)
    recorder = EventRecorder(kube, "nexus-controller", reporting_instance="pod-7")
    recorder.warning(cm, "SyncFailed", "backend said no", action="Sync")
    await recorder.flush()
    [ev] = await _events_about(kube, namespace, cm["metadata"]["uid"])
    assert (ev["type"], ev["reason"], ev["action"]) == ("Warning", "SyncFailed", "Sync")
    assert ev["reportingInstance"] == "pod-7"


async def test_repeats_become_one_event_with_a_series(kube: Client, namespace: str) -> None:
    cm = await _configmap(kube, namespace)
    recorder = EventRecorder(kube, "nexus-controller")
    recorder.warning(cm, "Failed", "boom")
    await recorder.flush()
    [first] = await _events_about(kube, namespace, cm["metadata"]["uid"])

    recorder.warning(cm, "Failed", "boom")
    await recorder.flush()
    [second] = await _events_about(kube, namespace, cm["metadata"]["uid"])
    assert second["metadata"]["name"] == first["metadata"]["name"]
    assert second["series"]["count"] == 2
    assert MICRO_TIME.match(second["series"]["lastObservedTime"])
    assert second["series"]["lastObservedTime"] > first["eventTime"]

    # A burst while a write is in flight is coalesced: few writes, exact final count.
    for _ in range(50):
        recorder.warning(cm, "Failed", "boom")
    assert recorder.in_flight == 1
    await recorder.flush()
    [third] = await _events_about(kube, namespace, cm["metadata"]["uid"])
    assert third["metadata"]["name"] == first["metadata"]["name"]
    assert third["series"]["count"] == 52

    # Any difference (here the note) is a distinct event.
    recorder.warning(cm, "Failed", "another failure")
    await recorder.flush()
    events = await _events_about(kube, namespace, cm["metadata"]["uid"])
    assert sorted(e["note"] for e in events) == ["another failure", "boom"]


async def test_repeat_after_the_window_starts_a_new_event(kube: Client, namespace: str) -> None:
    cm = await _configmap(kube, namespace)
    clock = FakeClock()
    recorder = EventRecorder(kube, "nexus-controller", clock=clock)
    recorder.normal(cm, "Tick", "tock")
    clock.advance(359)
    recorder.normal(cm, "Tick", "tock")  # within 6 min of the previous occurrence
    await recorder.flush()
    assert len(await _events_about(kube, namespace, cm["metadata"]["uid"])) == 1
    clock.advance(361)
    recorder.normal(cm, "Tick", "tock")
    await recorder.flush()
    assert recorder.cached == 1  # the expired series was forgotten
    events = await _events_about(kube, namespace, cm["metadata"]["uid"])
    assert sorted(e.get("series", {}).get("count", 1) for e in events) == [1, 2]


async def test_cluster_scoped_object_event_goes_to_a_system_namespace(
    kube: Client, namespace: str
) -> None:
    ns_obj = await kube.get(NAMESPACES, namespace)
    recorder = EventRecorder(kube, "nexus-controller")
    recorder.normal(ns_obj, "Seen", "cluster-scoped")
    await recorder.flush()
    # "default" on API servers >= 1.22; older ones (like envtest's 1.20) insist on
    # kube-system for events.k8s.io/v1 Events, and the recorder falls back to it.
    found = {
        ns: await _events_about(kube, ns, ns_obj["metadata"]["uid"])
        for ns in ("default", "kube-system")
    }
    [(event_ns, [ev])] = [(ns, evs) for ns, evs in found.items() if evs]
    assert ev["regarding"]["kind"] == "Namespace"
    assert "namespace" not in ev["regarding"]
    # The choice is remembered: the next event goes straight there, and repeats fold.
    recorder.normal(ns_obj, "Seen", "cluster-scoped")
    recorder.normal(ns_obj, "Seen", "cluster-scoped, again")
    await recorder.flush()
    evs = await _events_about(kube, event_ns, ns_obj["metadata"]["uid"])
    assert sorted(e.get("series", {}).get("count", 1) for e in evs) == [1, 2]
    for e in evs:
        await kube.delete(EVENTS, e["metadata"]["name"], event_ns)


async def test_long_fields_are_truncated_to_api_limits(kube: Client, namespace: str) -> None:
    cm = await _configmap(kube, namespace)
    recorder = EventRecorder(kube, "nexus-controller")
    recorder.normal(cm, "R" * 300, "é" * 1000)  # 2000 bytes of UTF-8
    await recorder.flush()
    [ev] = await _events_about(kube, namespace, cm["metadata"]["uid"])
    assert ev["reason"] == "R" * 128 and ev["action"] == "R" * 128
    assert ev["note"] == "é" * 512  # 1024 bytes, cut on a character boundary


async def test_odd_object_names_still_give_valid_event_names(kube: Client, namespace: str) -> None:
    ref = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:Controller:X", "uid": "0f0f-uid"},
    }
    recorder = EventRecorder(kube, "nexus-controller")
    recorder.normal(ref, "Checked", "odd name")
    await recorder.flush()
    [ev] = [
        e for ns in ("default", "kube-system") for e in await _events_about(kube, ns, "0f0f-uid")
    ]
    assert ev["metadata"]["name"].startswith("system-controller-x.")
    assert ev["regarding"]["name"] == "system:Controller:X"
    await kube.delete(EVENTS, ev["metadata"]["name"], ev["metadata"]["namespace"])


async def test_failures_are_logged_never_raised(
    envtest: Environment, kube: Client, namespace: str
) -> None:
    recorder = EventRecorder(kube, "nexus-controller")
    missing_ns = {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "x", "namespace": "no-such-namespace", "uid": "u1"},
    }
    recorder.normal(missing_ns, "Synced", "into a namespace that does not exist")
    recorder.event(missing_ns, "Bogus", "Synced", "invalid type, refused locally")
    recorder.normal(missing_ns, "", "empty reason, refused locally")
    recorder.normal({"weird": object()}, "Synced", "no metadata at all")
    recorder.normal(None, "Synced", "not a mapping")  # type: ignore[arg-type]
    await recorder.flush()
    # Called outside an event loop (another thread): dropped, not raised.
    await asyncio.to_thread(recorder.normal, missing_ns, "Synced", "from a thread")

    # An API server that cannot be reached: the writes fail (after brief retries) quietly.
    cfg = await envtest.client_configuration()
    cfg.host = f"https://127.0.0.1:{free_port()}"
    async with k8s_client.ApiClient(cfg) as api:
        dead = EventRecorder(Client(api), "nexus-controller", request_timeout=1.0)
        cm = await _configmap(kube, namespace)
        t0 = time.monotonic()
        dead.normal(cm, "Synced", "nobody listens")
        dead.warning(cm, "Failed", "nobody listens either")
        assert time.monotonic() - t0 < 0.05  # never blocks the caller
        async with asyncio.timeout(5):
            await dead.flush()
        assert dead.in_flight == 0
    assert await _events_about(kube, namespace, cm["metadata"]["uid"]) == []


async def test_in_flight_writes_are_bounded_and_the_rest_dropped(
    kube: Client, namespace: str
) -> None:
    cm = await _configmap(kube, namespace)
    recorder = EventRecorder(kube, "nexus-controller", max_in_flight=5, cache_size=8)
    for i in range(50):
        recorder.normal(cm, f"Reason{i}", "distinct")
    assert recorder.in_flight == 5
    assert recorder.dropped == 45
    assert recorder.cached == 8  # the aggregation cache is capped too
    await recorder.flush()
    events = await _events_about(kube, namespace, cm["metadata"]["uid"])
    assert sorted(e["reason"] for e in events) == [f"Reason{i}" for i in range(5)]


class _GatedWrites:
    """The real client, with Event creates held back so that a test can order them: the
    "Early" create waits for ``release``; the "Late" one waits until "Early" has been
    answered, then for one more real request, so it always ends after "Early"."""

    def __init__(self, kube: Client) -> None:
        self._kube = kube
        self.early_sent = asyncio.Event()
        self.release = asyncio.Event()
        self.early_done = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kube, name)

    async def create(self, res: Any, body: dict[str, Any], *args: Any, **kw: Any) -> Any:
        if body.get("reason") == "Early":
            self.early_sent.set()
            await self.release.wait()
            try:
                return await self._kube.create(res, body, *args, **kw)
            finally:
                self.early_done.set()
        if body.get("reason") == "Late":
            await self.early_done.wait()
            await self._kube.request("GET", "/version")
        return await self._kube.create(res, body, *args, **kw)


async def test_flush_waits_for_writes_scheduled_while_flushing(
    kube: Client, namespace: str
) -> None:
    cm = await _configmap(kube, namespace)
    gated = _GatedWrites(kube)
    recorder = EventRecorder(gated, "nexus-controller")  # type: ignore[arg-type]
    await recorder.flush()  # nothing pending: returns at once

    recorder.normal(cm, "Early", "scheduled before flush")
    await gated.early_sent.wait()
    flushing = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0)
    assert not flushing.done()  # flush is waiting for "Early"
    # Scheduled while flush waits; its write ends only after "Early"'s, so a flush that
    # waited only for the writes it saw when it began would return before it.
    recorder.normal(cm, "Late", "scheduled during flush")
    gated.release.set()
    async with asyncio.timeout(10):
        await flushing
    # Checked the moment flush returns, with no further flush or wait.
    assert recorder.in_flight == 0
    reasons = sorted(
        e["reason"] for e in await _events_about(kube, namespace, cm["metadata"]["uid"])
    )
    assert reasons == ["Early", "Late"]
