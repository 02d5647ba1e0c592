"""The manager's cache: one shared informer per (resource, namespace, selector)."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import structlog

from nexus.runtime.client import Client
from nexus.runtime.informer import Informer, InformerOptions, Object, Transform
from nexus.runtime.resource import Resource

log = structlog.get_logger("nexus.cache")

InformerKey = tuple[Resource, str | None, str | None]


class CacheSyncTimeout(TimeoutError):
    """Caches did not sync in time (missing RBAC verb, missing CRD, unreachable server)."""


class Cache:
    """Owns shared informers and answers reads from them.

    Guarantees: asking twice for the same (resource, namespace, label selector) returns the same
    :class:`Informer`, so every controller and reader shares one watch and one copy of each
    object. Informers requested after :meth:`start` are started at once.
    """

    def __init__(
        self,
        client: Client,
        *,
        options: InformerOptions | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.client = client
        self.options = options or InformerOptions()
        self._transform = transform
        self._informers: dict[InformerKey, Informer] = {}
        self._started = False

    def informer_for(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> Informer:
        key = (resource, namespace, label_selector)
        inf = self._informers.get(key)
        if inf is None:
            kwargs: dict[str, Any] = {}
            if self._transform is not None:
                kwargs["transform"] = self._transform
            inf = Informer(
                self.client,
                resource,
                namespace=namespace,
                label_selector=label_selector,
                options=self.options,
                **kwargs,
            )
            self._informers[key] = inf
            if self._started:
                inf.start()
        return inf

    @property
    def informers(self) -> builtins.list[Informer]:
        return list(self._informers.values())

    def start(self) -> None:
        self._started = True
        for inf in self._informers.values():
            inf.start()

    async def stop(self) -> None:
        self._started = False
        await asyncio.gather(*(inf.stop() for inf in self._informers.values()))

    @property
    def has_synced(self) -> bool:
        return all(inf.has_synced for inf in self._informers.values())

    async def wait_for_sync(self, timeout: float | None = None) -> None:
        waits = [inf.wait_for_sync() for inf in self._informers.values()]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
        except TimeoutError:
            pending = [
                f"{inf.resource} ({inf.last_error or 'no answer'})"
                for inf in self._informers.values()
                if not inf.has_synced
            ]
            raise CacheSyncTimeout(
                f"caches not synced after {timeout}s: {', '.join(pending)}"
            ) from None

    # -- reads ------------------------------------------------------------------------------

    def _find(self, resource: Resource, namespace: str | None) -> Informer:
        """The informer that answers reads of ``resource`` in ``namespace``.

        Preference: one scoped to that namespace, then a cluster-wide one; an informer without
        a label selector before one with (a selector-scoped informer sees only its objects).
        """
        candidates = [
            inf
            for (res, ns, _), inf in self._informers.items()
            if res == resource and ns in (namespace, None)
        ]
        if not candidates:
            raise LookupError(
                f"no informer for {resource} in {namespace or 'all namespaces'}; "
                "declare it with informer_for() before the manager starts"
            )
        candidates.sort(key=lambda i: (i.namespace is None, i.label_selector is not None))
        return candidates[0]

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Object | None:
        return self._find(resource, namespace).get(name, namespace)

    def list(self, resource: Resource, namespace: str | None = None) -> builtins.list[Object]:
        return self._find(resource, namespace).list(namespace)

    def by_index(
        self, resource: Resource, index: str, value: str, namespace: str | None = None
    ) -> builtins.list[Object]:
        return self._find(resource, namespace).by_index(index, value)
