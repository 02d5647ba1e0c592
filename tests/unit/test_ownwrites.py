"""OwnWrites: the echo of a reconciler's own write is recognised once; nothing else is."""

from __future__ import annotations

from typing import Any

from nexus.runtime.clock import FakeClock
from nexus.runtime.ownwrites import OwnWrites, Verdict
from nexus.runtime.resource import CONFIGMAPS

ECHO, CHANGE, PENDING = Verdict.ECHO, Verdict.CHANGE, Verdict.PENDING


def obj(uid: str, rv: str, name: str = "x") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv}}


def verdict(writes: OwnWrites, o: dict[str, Any], old: dict[str, Any] | None = None) -> Verdict:
    return writes.verdict(CONFIGMAPS, o, old)


def test_the_echo_of_a_create_is_its_first_event_once() -> None:
    writes = OwnWrites()
    writes.record(obj("u1", "5"), written_on=None)
    assert verdict(writes, obj("u1", "5")) is ECHO
    # Once only: a relist or a second watcher of the same version is not hidden twice.
    assert verdict(writes, obj("u1", "5")) is CHANGE
    assert writes.echoes == 1 and len(writes) == 0


def test_a_created_object_seen_as_an_update_is_a_change() -> None:
    # A relist that replaced an earlier object of the same name: its deletion is hidden in it.
    writes = OwnWrites()
    writes.record(obj("u2", "9"), written_on=None)
    assert verdict(writes, obj("u2", "9"), old=obj("u1", "3")) is CHANGE


def test_the_echo_of_a_guarded_write_comes_from_its_precondition() -> None:
    writes = OwnWrites()
    writes.record(obj("u1", "6"), written_on="5")
    assert verdict(writes, obj("u1", "6"), old=obj("u1", "5")) is ECHO


def test_an_update_that_spans_another_version_is_a_change() -> None:
    # A relist merged somebody's version 5 and our write on 5 into one update 4 -> 6.
    writes = OwnWrites()
    writes.record(obj("u1", "6"), written_on="5")
    assert verdict(writes, obj("u1", "6"), old=obj("u1", "4")) is CHANGE


def test_a_no_op_answer_is_not_recorded() -> None:
    writes = OwnWrites()
    writes.record(obj("u1", "5"), written_on="5")  # the precondition's version: nothing changed
    assert len(writes) == 0


def test_other_versions_and_other_objects_are_changes() -> None:
    writes = OwnWrites()
    writes.record(obj("u1", "5"), written_on=None)
    assert verdict(writes, obj("u1", "6"), old=obj("u1", "5")) is CHANGE  # a later write
    assert verdict(writes, obj("u2", "5")) is CHANGE  # another object, same version number
    assert verdict(writes, obj("u1", "5")) is ECHO


def test_several_writes_to_one_object_each_wait_for_their_echo() -> None:
    writes = OwnWrites()
    writes.record(obj("u1", "5"), written_on=None)
    writes.record(obj("u1", "6"), written_on="5")
    writes.record(obj("u1", "7"), written_on="6")
    assert verdict(writes, obj("u1", "5")) is ECHO
    assert verdict(writes, obj("u1", "6"), obj("u1", "5")) is ECHO
    assert verdict(writes, obj("u1", "7"), obj("u1", "6")) is ECHO


def test_an_answer_at_time_zero_is_recognised() -> None:
    writes = OwnWrites(clock=FakeClock(0.0).now)
    writes.record(obj("u1", "5"), written_on=None)
    assert verdict(writes, obj("u1", "5")) is ECHO


def test_an_event_during_a_write_waits_for_its_answer() -> None:
    writes = OwnWrites()
    path = CONFIGMAPS.path("ns", "x")
    writes.begin(path)
    early = obj("u1", "5")  # the echo, ahead of the answer
    assert verdict(writes, early) is PENDING
    settled: list[Verdict] = []
    writes.when_answered(CONFIGMAPS, early, lambda: settled.append(verdict(writes, early)))
    assert settled == []
    writes.record(obj("u1", "5"), written_on=None)
    writes.end(path)
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
    writes.end(path)  # failed: nothing recorded
    assert settled == []  # the other write has not answered
    writes.record(obj("u1", "6"), written_on=None)
    writes.end(path)
    assert settled == [CHANGE]


def test_a_callback_error_does_not_reach_the_writer() -> None:
    writes = OwnWrites()
    path = CONFIGMAPS.path("ns", "x")
    writes.begin(path)

    def broken() -> None:
        raise RuntimeError("a watcher's bug")

    writes.when_answered(CONFIGMAPS, obj("u1", "5"), broken)
    writes.end(path)  # does not raise


def test_answers_without_uid_or_version_are_not_recorded() -> None:
    writes = OwnWrites()
    writes.record(None, written_on=None)
    writes.record({"metadata": {"name": "x"}}, written_on=None)
    writes.record({"kind": "Status"}, written_on="3")
    assert len(writes) == 0


def test_echoes_that_never_come_are_forgotten_after_the_ttl() -> None:
    clock = FakeClock()
    writes = OwnWrites(ttl=60.0, clock=clock.now)
    writes.record(obj("u1", "5"), written_on=None)  # its event came before (a relist, say)
    clock.advance(30)
    writes.record(obj("u2", "9"), written_on=None)
    clock.advance(31)
    writes.record(obj("u3", "1"), written_on=None)  # sweeps what is older than the TTL
    assert len(writes) == 2
    clock.advance(61)
    assert verdict(writes, obj("u9", "1")) is CHANGE  # events sweep too
    assert len(writes) == 0


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
    await client.create(CONFIGMAPS, {"metadata": {"name": "a"}})  # rv 1
    await client.replace(CONFIGMAPS, {"metadata": {"name": "b", "resourceVersion": "0"}})  # 2
    test = {"op": "test", "path": "/metadata/resourceVersion", "value": "0"}
    await client.patch(CONFIGMAPS, "c", [test], "ns", patch_type="json")  # 3
    guarded = {"metadata": {"resourceVersion": "0"}, "data": {}}
    await client.patch(CONFIGMAPS, "d", guarded, "ns")  # 4
    assert len(writes) == 4
    # Unguarded writes (their answer may be a no-op's), deletions, generated names: not.
    await client.patch(CONFIGMAPS, "e", {"data": {}}, "ns")
    await client.patch_status(CONFIGMAPS, "f", {"phase": "Ready"}, "ns")
    await client.replace(CONFIGMAPS, {"metadata": {"name": "g"}})
    await client.delete(CONFIGMAPS, "a", "ns")
    await client.create(CONFIGMAPS, {"metadata": {"generateName": "g-"}})
    assert len(writes) == 4
    assert ("patch", ("f", "status")) in inner.calls
    assert verdict(writes, obj("uid-a", "1", "a")) is ECHO
    assert verdict(writes, obj("uid-d", "4", "d"), obj("uid-d", "0", "d")) is ECHO
