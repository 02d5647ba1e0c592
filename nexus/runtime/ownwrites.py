"""Own writes: a controller is not woken by the watch echo of what its reconciler wrote.

A reconciler that creates or patches objects it also watches sees each of its writes come back
as a watch event a moment later, and the workqueue runs it once more for them: a second pass
per object that compares everything again and writes nothing. Kubernetes' own controllers
avoid those passes with "expectations"; this is the same idea at the level of one write.

Only writes whose answer is known to be the write's own version count: creates, and writes
with a resourceVersion precondition (a JSON patch that tests it, a merge patch or a replace
that carries it) whose answer has another version than the precondition. The answer to any
other write may be a no-op that returns the version somebody else made, and taking that
version's event for an echo would hide their change. The echo of a precondition write is the
update from exactly the precondition's version to the answer's: a watch event from any other
version (a relist that skipped versions, a change in between) is a change.

The echo may also arrive before the answer (the watch and the write use different
connections). An event for an object with a write in flight is therefore decided once that
write has answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import structlog

from nexus.runtime.client import Client, PatchType
from nexus.runtime.objects import Object
from nexus.runtime.resource import Resource

log = structlog.get_logger("nexus.runtime.ownwrites")

#: How long an answer's resourceVersion waits for its echo (s). An echo comes within
#: milliseconds; one that never comes (the object went first, or no watch of this controller
#: sees it, or a predicate stopped the event before it was asked) is forgotten.
ECHO_TTL = 60.0


class Verdict(Enum):
    """What :meth:`OwnWrites.verdict` says of one event; only ``ECHO`` may be dropped."""

    ECHO = "echo"
    CHANGE = "change"
    #: A write to the object has not answered yet: ask again once it has.
    PENDING = "pending"


class OwnWrites:
    """The resourceVersions of the answers to one controller's writes; which events are their
    echoes.

    Guarantees:

    * an event is an echo only if its object has the uid *and* the resourceVersion of a
      recorded answer and, for an update, comes from the version the write was made on (for a
      create: is the object's first event); each answer has one echo. Anything else (another
      writer's change, a later version, an update that spans several versions, a resync, any
      deletion) is a change. A miss can only let an echo through, which costs a pass that
      writes nothing; a change is never taken for an echo;
    * an event for an object while a write to it is in flight is :attr:`Verdict.PENDING`, and
      the callbacks given to :meth:`when_answered` run once no write to it is in flight (after
      a failed write too, when the event is then a change);
    * only writes made through :meth:`writer`'s client count, so each controller has its own
      ``OwnWrites``, and a write by one controller still wakes the others that watch the
      object;
    * memory is bounded by the answers of the last :data:`ECHO_TTL` seconds (older ones go at
      the next write or event).

    Give it to a controller with ``ControllerOptions(own_writes=...)``; the cache still stores
    every event, only the enqueueing of an echo is skipped.
    """

    def __init__(self, ttl: float = ECHO_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        #: (uid, resourceVersion) of each answer -> (the version it was written on, None for a
        #: create; when it came). Several writes to one object may wait for their echoes.
        self._answers: dict[tuple[str, str], tuple[str | None, float]] = {}
        #: Object path -> writes to it not answered yet.
        self._in_flight: dict[str, int] = {}
        #: Object path -> what to run once its writes have answered.
        self._waiting: dict[str, list[Callable[[], None]]] = {}
        self._swept = clock()
        #: Echoes recognised so far.
        self.echoes = 0

    def writer(self, client: Client) -> RecordingClient:
        """``client`` for the reconciler: every answer to a write it makes is recorded."""
        return RecordingClient(client, self)

    # -- the writer's side --------------------------------------------------------------------

    def begin(self, path: str) -> None:
        """A write to the object at ``path`` is on its way."""
        self._in_flight[path] = self._in_flight.get(path, 0) + 1

    def end(self, path: str) -> None:
        """The write to ``path`` has answered (or failed)."""
        left = self._in_flight[path] - 1
        if left:
            self._in_flight[path] = left
            return
        del self._in_flight[path]
        for callback in self._waiting.pop(path, ()):
            try:
                callback()
            except Exception:
                # A watcher's error is not the write's: the reconcile that wrote goes on.
                log.exception("ownwrites.callback_error", path=path)

    def record(self, answer: Mapping[str, Any] | None, *, written_on: str | None) -> None:
        """Remember an answer: to a create (``written_on`` None), or to a write made with the
        precondition ``written_on`` (ignored if the answer has that version: nothing
        changed)."""
        meta = (answer or {}).get("metadata") or {}
        uid, rv = meta.get("uid"), meta.get("resourceVersion")
        if not uid or not rv or rv == written_on:
            return
        now = self._clock()
        self._answers[(uid, rv)] = (written_on, now)
        if now - self._swept > self.ttl:
            self._sweep(now)

    # -- the watcher's side -------------------------------------------------------------------

    def verdict(self, res: Resource, obj: Object, old: Object | None = None) -> Verdict:
        """Whether the event (``obj``, and ``old`` for an update) is the echo of an answer;
        an answer is consumed by the first event with its version."""
        now = self._clock()
        if now - self._swept > self.ttl:
            self._sweep(now)
        meta = obj.get("metadata") or {}
        answer = self._answers.pop((str(meta.get("uid")), str(meta.get("resourceVersion"))), None)
        if answer is not None:
            written_on = answer[0]
            if old is None:
                echo = written_on is None
            else:
                echo = written_on is not None and _rv(old) == written_on
            if echo:
                self.echoes += 1
                return Verdict.ECHO
            return Verdict.CHANGE
        if self._in_flight and path_of(res, meta) in self._in_flight:
            return Verdict.PENDING
        return Verdict.CHANGE

    def when_answered(self, res: Resource, obj: Object, callback: Callable[[], None]) -> None:
        """Run ``callback`` once no write to ``obj`` is in flight (at once if none is)."""
        path = path_of(res, obj.get("metadata") or {})
        if path in self._in_flight:
            self._waiting.setdefault(path, []).append(callback)
        else:
            callback()

    def __len__(self) -> int:
        return len(self._answers)

    def _sweep(self, now: float) -> None:
        self._swept = now
        old = [key for key, (_, at) in self._answers.items() if now - at > self.ttl]
        for key in old:
            del self._answers[key]


def path_of(res: Resource, meta: Mapping[str, Any]) -> str:
    return res.path(meta.get("namespace"), meta.get("name"))


def _rv(obj: Mapping[str, Any]) -> str | None:
    rv: str | None = (obj.get("metadata") or {}).get("resourceVersion")
    return rv


def precondition(patch: Any, patch_type: PatchType) -> str | None:
    """The resourceVersion a patch is guarded by, if any."""
    if patch_type == "json" and isinstance(patch, list):
        for op in patch:
            if (
                isinstance(op, Mapping)
                and op.get("op") == "test"
                and op.get("path") == "/metadata/resourceVersion"
            ):
                value = op.get("value")
                return str(value) if value else None
        return None
    if patch_type in ("merge", "strategic") and isinstance(patch, Mapping):
        value = (patch.get("metadata") or {}).get("resourceVersion")
        return str(value) if value else None
    return None


class RecordingClient:
    """A :class:`~nexus.runtime.client.Client` for one reconciler: the same calls; the answers
    of its creates and of its writes with a resourceVersion precondition recorded in an
    :class:`OwnWrites`, and every write to a named object tracked while in flight.

    Reads and deletions go through unchanged (a deletion's events always wake the watchers).
    A create with ``generateName`` is not tracked (its object's name is not known before).
    """

    def __init__(self, client: Client, writes: OwnWrites) -> None:
        self.client = client
        self.writes = writes

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Object:
        return await self.client.get(res, name, namespace)

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> Object | None:
        return await self.client.get_or_none(res, name, namespace)

    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None
    ) -> Object:
        meta = obj.get("metadata") or {}
        if not meta.get("name"):
            return await self.client.create(res, obj, namespace)
        path = res.path(namespace or meta.get("namespace"), meta["name"])
        self.writes.begin(path)
        try:
            created = await self.client.create(res, obj, namespace)
            self.writes.record(created, written_on=None)
            return created
        finally:
            self.writes.end(path)

    async def replace(
        self, res: Resource, obj: Mapping[str, Any], *, subresource: str = ""
    ) -> Object:
        meta = obj.get("metadata") or {}
        path = path_of(res, meta)
        self.writes.begin(path)
        try:
            replaced = await self.client.replace(res, obj, subresource=subresource)
            if meta.get("resourceVersion"):
                self.writes.record(replaced, written_on=str(meta["resourceVersion"]))
            return replaced
        finally:
            self.writes.end(path)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
        subresource: str = "",
        field_manager: str | None = None,
        force: bool | None = None,
    ) -> Object:
        path = res.path(namespace, name)
        guard = precondition(patch, patch_type)
        self.writes.begin(path)
        try:
            patched = await self.client.patch(
                res,
                name,
                patch,
                namespace,
                patch_type=patch_type,
                subresource=subresource,
                field_manager=field_manager,
                force=force,
            )
            if guard is not None:
                self.writes.record(patched, written_on=guard)
            return patched
        finally:
            self.writes.end(path)

    async def patch_status(
        self,
        res: Resource,
        name: str,
        status: Mapping[str, Any],
        namespace: str | None = None,
    ) -> Object:
        return await self.patch(res, name, {"status": status}, namespace, subresource="status")

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        preconditions: Mapping[str, str] | None = None,
        ignore_not_found: bool = False,
    ) -> Object | None:
        return await self.client.delete(
            res,
            name,
            namespace,
            propagation_policy=propagation_policy,
            preconditions=preconditions,
            ignore_not_found=ignore_not_found,
        )
