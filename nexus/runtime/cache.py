"""The manager's cache: one shared informer per (resource, namespace, selector)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from nexus.runtime.client import Client
from nexus.runtime.informer import Informer, InformerOptions
from nexus.runtime.objects import Object
from nexus.runtime.resource import Resource
from nexus.runtime.transform import StringPool, Transform, shared

log = structlog.get_logger("nexus.cache")

InformerKey = tuple[Resource, str | None, str | None]


class CacheSyncTimeout(TimeoutError):
    """Caches did not sync in time (missing RBAC verb, missing CRD, unreachable server)."""


@dataclass(frozen=True, slots=True)
class _Shape:
    transform: Transform | None
    metadata_only: bool


class Cache:
    """Owns shared informers and answers reads from them.

    Guarantees: asking twice for the same (resource, namespace, label selector) returns the same
    :class:`Informer`, so every controller and reader shares one watch and one copy of each
    object. Informers requested after :meth:`start` are started at once.

    What is stored of each object: by default, everything but ``managedFields``, with the
    strings of all cached objects shared through one :class:`StringPool` (:attr:`strings`);
    ``transform`` replaces that default for every resource, :meth:`configure` for one.

    While started, it hands freed heap memory back to the system every ``trim_interval``
    seconds (glibc's ``malloc_trim``; nothing elsewhere): a burst of API traffic (a thousand
    tenants provisioned, a relist) leaves megabytes of freed response bodies and connection
    buffers that the allocator would otherwise keep as resident memory.
    """

    def __init__(
        self,
        client: Client,
        *,
        options: InformerOptions | None = None,
        transform: Transform | None = None,
        trim_interval: float | None = 60.0,
    ) -> None:
        self.client = client
        self.options = options or InformerOptions()
        self._trim_interval = trim_interval
        self._trim_task: asyncio.Task[None] | None = None
        #: Shared by the default transform; resource transforms may share through it too.
        self.strings = StringPool()
        self._transform = transform or shared(self.strings)
        self._shapes: dict[Resource, _Shape] = {}
        self._informers: dict[InformerKey, Informer] = {}
        #: (resource, namespace) -> the informer answering reads (see _find); reads are the
        #: API's hot path, informers are declared once. A namespace without an informer of its
        #: own is answered by the cluster-wide one, under the key (resource, None): the table
        #: stays as small as the informers, whatever namespaces come and go.
        self._readers: dict[tuple[Resource, str | None], Informer] = {}
        self._scoped: dict[Resource, set[str]] = {}
        self._started = False

    def configure(
        self,
        resource: Resource,
        *,
        transform: Transform | None = None,
        metadata_only: bool = False,
    ) -> None:
        """How the informers of ``resource`` store its objects: ``transform`` instead of the
        cache's default, and ``metadata_only`` to list and watch metadata alone (for a kind of
        which readers need only names, labels and deletion).

        Applies to the informers of ``resource`` declared already, as long as they have not
        started (else ``RuntimeError``), and to those declared later.
        """
        shape = _Shape(transform, metadata_only)
        for (res, _, _), inf in self._informers.items():
            if res == resource:
                inf.reshape(transform or self._transform, metadata_only=metadata_only)
        self._shapes[resource] = shape

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
            shape = self._shapes.get(resource)
            inf = Informer(
                self.client,
                resource,
                namespace=namespace,
                label_selector=label_selector,
                options=self.options,
                transform=(shape.transform if shape and shape.transform else self._transform),
                metadata_only=shape.metadata_only if shape else False,
            )
            self._informers[key] = inf
            self._readers.clear()
            if namespace is not None:
                self._scoped.setdefault(resource, set()).add(namespace)
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
        trim = _malloc_trim()
        if self._trim_interval and trim is not None and self._trim_task is None:
            self._trim_task = asyncio.create_task(
                _trim_loop(trim, self._trim_interval), name="cache:malloc_trim"
            )

    async def stop(self) -> None:
        self._started = False
        if self._trim_task is not None:
            self._trim_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trim_task
            self._trim_task = None
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
        scoped = self._scoped.get(resource)
        key = (resource, namespace if scoped and namespace in scoped else None)
        found = self._readers.get(key)
        if found is not None:
            return found
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
        self._readers[key] = candidates[0]
        return candidates[0]

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Object | None:
        return self._find(resource, namespace).get(name, namespace)

    def list(self, resource: Resource, namespace: str | None = None) -> builtins.list[Object]:
        return self._find(resource, namespace).list(namespace)

    def by_index(
        self, resource: Resource, index: str, value: str, namespace: str | None = None
    ) -> builtins.list[Object]:
        return self._find(resource, namespace).by_index(index, value)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library, another system)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


async def _trim_loop(trim: Callable[[int], int], interval: float) -> None:
    # A millisecond or so per call on a heap of a few hundred megabytes, on the loop: cheaper
    # than handing it to a thread, which would get an allocator arena of its own.
    while True:
        await asyncio.sleep(interval)
        trim(0)
