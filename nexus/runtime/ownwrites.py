"""Own writes: a controller is not woken by the watch echo of what its reconciler wrote.

A reconciler that creates or patches objects it also watches sees each of its writes come back
as a watch event a moment later, and the workqueue runs it once more for them: a second pass
per object that compares everything again and writes nothing. Kubernetes' own controllers
avoid those passes with "expectations"; this is the same idea at the level of one write: the
resourceVersion an answer carries is remembered, and the event that carries that same
resourceVersion is known to be the echo.

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
#: milliseconds; one that never comes (a no-op patch answers the version it had) is forgotten.
ECHO_TTL = 60.0


class Verdict(Enum):
    ECHO = "echo"
    CHANGE = "change"
    #: A write to the object has not answered yet: ask again once it has.
    PENDING = "pending"


class OwnWrites:
    """The resourceVersions of the answers to one controller's writes; which events are their
    echoes.

    Guarantees:

    * an event is an echo only if its object has the uid *and* the resourceVersion of a
      recorded answer, and each answer has one echo. Anything else (another writer's change, a
      later version, any deletion) is a change. A miss can only let an echo through, which
      costs a pass that writes nothing; a change is never taken for an echo;
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
        #: (uid, resourceVersion) of each answer -> when it came. Several writes to one object
        #: may all be waiting for their echoes.
        self._answers: dict[tuple[str, str], float] = {}
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

    def end(self, path: str, answer: Mapping[str, Any] | None) -> None:
        """The write to ``path`` answered ``answer`` (None: it failed)."""
        self.record(answer)
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

    def record(self, answer: Mapping[str, Any] | None) -> None:
        """Remember the version of an object as a write's answer returned it."""
        meta = (answer or {}).get("metadata") or {}
        uid, rv = meta.get("uid"), meta.get("resourceVersion")
        if not uid or not rv:
            return
        now = self._clock()
        self._answers[(uid, rv)] = now
        if now - self._swept > self.ttl:
            self._sweep(now)

    # -- the watcher's side -------------------------------------------------------------------

    def verdict(self, res: Resource, obj: Object) -> Verdict:
        """Whether the event object ``obj`` of ``res`` is the echo of an answer (consumed)."""
        now = self._clock()
        if now - self._swept > self.ttl:
            self._sweep(now)
        meta = obj.get("metadata") or {}
        if self._answers.pop((str(meta.get("uid")), str(meta.get("resourceVersion"))), None):
            self.echoes += 1
            return Verdict.ECHO
        if path_of(res, meta) in self._in_flight:
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
        old = [key for key, at in self._answers.items() if now - at > self.ttl]
        for key in old:
            del self._answers[key]


def path_of(res: Resource, meta: Mapping[str, Any]) -> str:
    return res.path(meta.get("namespace"), meta.get("name"))


class RecordingClient:
    """A :class:`~nexus.runtime.client.Client` for one reconciler: the same calls, and the
    answers of its creates, replaces and patches recorded in an :class:`OwnWrites`.

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
        created = None
        try:
            created = await self.client.create(res, obj, namespace)
            return created
        finally:
            self.writes.end(path, created)

    async def replace(
        self, res: Resource, obj: Mapping[str, Any], *, subresource: str = ""
    ) -> Object:
        path = path_of(res, obj.get("metadata") or {})
        self.writes.begin(path)
        replaced = None
        try:
            replaced = await self.client.replace(res, obj, subresource=subresource)
            return replaced
        finally:
            self.writes.end(path, replaced)

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
        self.writes.begin(path)
        patched = None
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
            return patched
        finally:
            self.writes.end(path, patched)

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
