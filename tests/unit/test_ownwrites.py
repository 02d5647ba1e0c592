"""OwnWrites: the echo of a reconciler's own write is recognised once; nothing else is."""

from __future__ import annotations

from typing import Any

from nexus.runtime.clock import FakeClock
from nexus.runtime.ownwrites import OwnWrites, Verdict
from nexus.runtime.resource import CONFIGMAPS

ECHO, CHANGE, PENDING = Verdict.ECHO, Verdict.CHANGE, Verdict.PENDING


def obj(uid: str, rv: str, name: str = "x") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv}}


def verdict(writes: OwnWrites, o: dict[str, Any]) -> Verdict:
    return writes.verdict(CONFIGMAPS, o)


def test_the_echo_of_a_recorded_answer_is_recognised_once() -> None:
    writes = OwnWrites()
    writes.record(obj("u1", "5"))
    assert verdict(writes, obj("u1", "5")) is ECHO
    # Once only: a relist or a second watcher of the same version is not hidden twice.
    assert verdict(writes, obj("u1", "5")) is CHANGE
    assert writes.echoes == 1 and len(writes) == 0


def test_other_versions_and_other_objects_are_changes() -> None:
    writes = OwnWrites()
    writes.record(obj("u1", "5"))
    assert verdict(writes, obj("u1", "6")) is CHANGE  # someone else's later write
    assert verdict(writes, obj("u2", "5")) is CHANGE  # another object, same version number
    assert verdict(writes, obj("u1", "5")) is ECHO


def test_several_writes_to_one_object_each_wait_for_their_echo() -> None:
    writes = OwnWrites()
    for rv in ("5", "6", "7"):  # finalizer, then two status patches
        writes.record(obj("u1", rv))
    assert [verdict(writes, obj("u1", rv)) for rv in ("5", "6", "7")] == [ECHO, ECHO, ECHO]


def test_an_event_during_a_write_waits_for_its_answer() -> None:
    writes = OwnWrites()
    path = CONFIGMAPS.path("ns", "x")
    writes.begin(path)
    early = obj("u1", "5")  # the echo, ahead of the answer
    assert verdict(writes, early) is PENDING
    settled: list[Verdict] = []
    writes.when_answered(CONFIGMAPS, early, lambda: settled.append(verdict(writes, early)))
    assert settled == []
    writes.end(path, obj("u1", "5"))
    assert settled == [ECHO]
    # No write in flight: at once.
    writes.when_answered(CONFIGMAPS, early, lambda: settled.append(CHANGE))
    assert settled == [ECHO, CHANGE]


def test_a_failed_write_leaves_the_event_a_change() -> None:
    writes = OwnWrites()
    path = CONFIGMAPS.path("ns", "x")
    writes.begin(path)
    writes.begin(path)  # two writes to one object at once
    event = obj("u1", "5")
    settled: list[Verdict] = []
    writes.when_answered(CONFIGMAPS, event, lambda: settled.append(verdict(writes, event)))
    writes.end(path, None)
    assert settled == []  # the other write has not answered
    writes.end(path, obj("u1", "6"))
    assert settled == [CHANGE]


def test_a_callback_error_does_not_reach_the_writer() -> None:
    writes = OwnWrites()
    path = CONFIGMAPS.path("ns", "x")
    writes.begin(path)
    writes.when_answered(CONFIGMAPS, obj("u1", "5"), lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    writes.end(path, obj("u1", "5"))  # does not raise


def test_answers_without_uid_or_version_are_not_recorded() -> None:
    writes = OwnWrites()
    writes.record(None)
    writes.record({"metadata": {"name": "x"}})
    writes.record({"kind": "Status"})
    assert len(writes) == 0


def test_echoes_that_never_come_are_forgotten_after_the_ttl() -> None:
    clock = FakeClock()
    writes = OwnWrites(ttl=60.0, clock=clock.now)
    writes.record(obj("u1", "5"))  # a no-op patch: no event will ever carry it
    clock.advance(30)
    writes.record(obj("u2", "9"))
    clock.advance(31)
    writes.record(obj("u3", "1"))  # sweeps what is older than the TTL
    assert len(writes) == 2
    clock.advance(61)
    writes.record(obj("u4", "1"))
    assert len(writes) == 1


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.rv = 0

    def _answer(self, name: str) -> dict[str, Any]:
        self.rv += 1
        return obj(f"uid-{name}", str(self.rv))

    async def get(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(("get", name))
        return obj(f"uid-{name}", "1")

    async def get_or_none(self, res: Any, name: str, namespace: str | None = None) -> Any:
        self.calls.append(("get_or_none", name))
        return None

    async def create(self, res: Any, body: Any, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(("create", body["metadata"].get("name")))
        return self._answer(body["metadata"].get("name", "generated"))

    async def replace(self, res: Any, body: Any, *, subresource: str = "") -> dict[str, Any]:
        self.calls.append(("replace", body["metadata"]["name"]))
        return self._answer(body["metadata"]["name"])

    async def patch(self, res: Any, name: str, patch: Any, namespace: Any = None, **kw: Any) -> Any:
        self.calls.append(("patch", (name, kw.get("subresource"))))
        return self._answer(name)

    async def delete(self, res: Any, name: str, namespace: Any = None, **kw: Any) -> Any:
        self.calls.append(("delete", name))
        return obj(f"uid-{name}", "99")


async def test_the_recording_client_records_writes_and_only_writes() -> None:
    inner = FakeClient()
    writes = OwnWrites()
    client = writes.writer(inner)  # type: ignore[arg-type]
    await client.get(CONFIGMAPS, "a", "ns")
    await client.get_or_none(CONFIGMAPS, "a", "ns")
    assert len(writes) == 0
    await client.create(CONFIGMAPS, {"metadata": {"name": "a"}})
    await client.replace(CONFIGMAPS, {"metadata": {"name": "b"}})
    await client.patch(CONFIGMAPS, "c", {"data": {}}, "ns")
    await client.patch_status(CONFIGMAPS, "d", {"phase": "Ready"}, "ns")
    assert len(writes) == 4
    await client.delete(CONFIGMAPS, "a", "ns")  # its events always wake the watchers
    await client.create(CONFIGMAPS, {"metadata": {"generateName": "g-"}})  # name unknown
    assert len(writes) == 4
    assert ("patch", ("d", "status")) in inner.calls
    assert verdict(writes, obj("uid-a", "1", "a")) is ECHO
    assert verdict(writes, obj("uid-d", "4", "d")) is ECHO
