"""What the reconcilers need from the world, and nothing more.

Each reconciler is given these instead of the whole Manager, so it can be driven in a unit
test by small fakes. In the manager: :class:`CacheReader` is the manager's informer cache,
:class:`Writer` its API-server client, :class:`EventSink` an event recorder, :class:`NodeApi`
the node client, :class:`WallClock` :class:`SystemClock`.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Mapping
from typing import Any, Protocol

from nexus.runtime.client import PatchType
from nexus.runtime.objects import Object
from nexus.runtime.resource import Resource


class CacheReader(Protocol):
    """Reads from the informer cache: fast, possibly a little stale, never a network call."""

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Object | None: ...

    def list(self, resource: Resource, namespace: str | None = None) -> list[Object]: ...

    def by_index(
        self, resource: Resource, index: str, value: str, namespace: str | None = None
    ) -> builtins.list[Object]: ...


class Writer(Protocol):
    """Calls to the API server: every write, and the fresh reads a write depends on."""

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Object: ...

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> Object | None: ...

    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None
    ) -> Object: ...

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
    ) -> Object: ...

    async def patch_status(
        self, res: Resource, name: str, status: Mapping[str, Any], namespace: str | None = None
    ) -> Object: ...

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        ignore_not_found: bool = False,
    ) -> Object | None: ...


class EventSink(Protocol):
    """Records Kubernetes Events about an object; never raises, never waits."""

    def normal(
        self, regarding: Mapping[str, Any], reason: str, note: str, action: str | None = None
    ) -> None: ...

    def warning(
        self, regarding: Mapping[str, Any], reason: str, note: str, action: str | None = None
    ) -> None: ...


class NodeApi(Protocol):
    """The calls the reconcilers make to a tenant's node; failures raise NodeError.

    The agent reconciler registers, deploys, pauses and deletes its agent; the tenant
    reconciler lists the node's agents to remove those no NexusAgent stands for.
    """

    async def list_agents(self, namespace: str) -> list[dict[str, Any]]: ...

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def register(self, namespace: str, spec: Mapping[str, Any]) -> None: ...

    async def deploy(self, namespace: str, name: str) -> None: ...

    async def pause(self, namespace: str, name: str) -> None: ...

    async def delete(self, namespace: str, name: str) -> None: ...


class WallClock(Protocol):
    """The time that statuses and conditions are stamped with."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """The machine's wall clock."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()
