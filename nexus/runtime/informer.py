"""Shared informers: a list+watch reflector feeding an indexed in-memory store and handlers.

One informer per (resource, namespace, label selector) serves every controller of a manager
(see :class:`nexus.runtime.cache.Cache`). Reads in reconcilers come from its store, never from
the API server.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog

from nexus.runtime import metrics
from nexus.runtime.backoff import Backoff
from nexus.runtime.client import ApiError, Client
from nexus.runtime.objects import Object
from nexus.runtime.resource import Resource, object_key
from nexus.runtime.transform import Transform, strip_managed_fields

log = structlog.get_logger("nexus.informer")

IndexFunc = Callable[[Object], Iterable[str]]

NAMESPACE_INDEX = "namespace"

__all__ = [
    "NAMESPACE_INDEX",
    "EventHandler",
    "IndexFunc",
    "Informer",
    "InformerOptions",
    "Object",
    "Transform",
    "handler_name",
    "strip_managed_fields",
]


def _namespace_index(obj: Object) -> Iterable[str]:
    ns = (obj.get("metadata") or {}).get("namespace")
    return (ns,) if ns else ()


class EventHandler(Protocol):
    """Receives store changes. Called synchronously on the event loop: must not block.

    ``initial`` marks objects seen by the first list (and objects replayed to a handler that
    joined late), so that controllers can queue them at low priority.
    ``final_state_unknown`` marks a deletion detected by a relist: the object shown is the last
    state the cache saw, not the state at deletion (client-go's ``DeletedFinalStateUnknown``).

    An exception from a handler is logged (``informer.handler_error``) and counted in
    ``informer_handler_errors_total``; it never reaches the other handlers or the watch. An
    optional ``name`` attribute labels those errors (else the class name is used).
    """

    def on_add(self, obj: Object, initial: bool) -> None: ...
    def on_update(self, old: Object, new: Object) -> None: ...
    def on_delete(self, obj: Object, final_state_unknown: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class InformerOptions:
    """Tuning of one informer. Defaults follow client-go / controller-runtime."""

    #: Seconds without a single byte on a watch (not even a bookmark) before the stream is
    #: considered dead and reopened from the last resourceVersion. kopf uses 70 s.
    idle_timeout: float = 70.0
    #: Server-side watch timeout is drawn from this range, like client-go's reflector.
    watch_timeout: tuple[int, int] = (300, 600)
    #: Periodic resync (on_update(obj, obj) for every object); None disables it.
    #: controller-runtime's default is 10 h with +-10 % jitter.
    resync_period: float | None = None
    #: Page size of the paginated list.
    page_size: int = 500
    #: Reconnect backoff: 800 ms -> 30 s, x2, jitter, reset after 2 min healthy.
    backoff_initial: float = 0.8
    backoff_cap: float = 30.0
    backoff_reset_after: float = 120.0


class Informer:
    """List, then watch from the list's resourceVersion, forever.

    Guarantees:
      * after :attr:`has_synced`, the store holds every object of the first list, and then
        follows the watch; a watch that ends, errors or goes silent is reopened from the last
        seen resourceVersion (bookmarks included) without a relist;
      * ``410 Gone`` (the resourceVersion was compacted away) triggers a fresh list, and the
        store is reconciled with it: new objects are added, changed ones updated, vanished ones
        deleted with ``final_state_unknown=True``;
      * connection errors back off (800 ms -> 30 s with jitter, forgiven after 2 min healthy);
        an unexpected exception is logged and retried: the informer task never dies silently;
      * indexes are kept in step with the store and shrink when objects go away;
      * handlers are isolated from each other and from the watch (client-go's
        ``processorListener``): a handler that raises on an object is logged and counted in
        ``informer_handler_errors_total``; the other handlers still receive that event, the
        store keeps it, the list still syncs and the watch goes on. The failing handler is not
        called again for that event: it sees the object next on its next change or resync.

      * ``transform`` (default: drop ``managedFields``) is applied to every object before it is
        stored or handed to a handler, one list page at a time: the whole list is never held
        decoded;
      * ``metadata_only`` lists and watches ``PartialObjectMetadata`` (client-go's metadata
        informer): objects hold ``metadata`` only, with this resource's apiVersion and kind.

    Caveats: handlers see the latest state, not every intermediate one (watch semantics);
    a deletion while disconnected is seen only as a tombstone after the next list.
    """

    def __init__(
        self,
        client: Client,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Transform | None = strip_managed_fields,
        options: InformerOptions | None = None,
        metadata_only: bool = False,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.options = options or InformerOptions()
        self._transform = transform
        self.metadata_only = metadata_only
        self._store: dict[str, Object] = {}
        self._indexers: dict[str, IndexFunc] = {NAMESPACE_INDEX: _namespace_index}
        # value -> the key, or the set of keys, of the objects with that value: most values
        # (a namespace) index one object, and a set costs 200 bytes more than a string.
        self._indices: dict[str, dict[str, str | set[str]]] = {NAMESPACE_INDEX: {}}
        self._handlers: list[EventHandler] = []
        self._synced = asyncio.Event()
        self._resource_version: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(
            initial=self.options.backoff_initial,
            cap=self.options.backoff_cap,
            reset_after=self.options.backoff_reset_after,
        )
        self.last_error: str | None = None
        #: Counters for tests and diagnostics.
        self.stats = {
            "lists": 0,
            "watches": 0,
            "relists_gone": 0,
            "idle_reconnects": 0,
            "handler_errors": 0,
        }
        self._log = log.bind(resource=str(resource), namespace=namespace, selector=label_selector)

    # -- configuration ----------------------------------------------------------------------

    def add_indexer(self, name: str, fn: IndexFunc) -> None:
        """Register a named index; existing objects are indexed at once."""
        if name in self._indexers:
            if self._indexers[name] is not fn:
                raise ValueError(f"indexer {name!r} already registered")
            return
        self._indexers[name] = fn
        index: dict[str, str | set[str]] = {}
        self._indices[name] = index
        for key, obj in self._store.items():
            for value in fn(obj):
                _add(index, value, key)

    def reshape(self, transform: Transform | None, *, metadata_only: bool = False) -> None:
        """Replaces the transform (and the metadata-only choice) before the first list."""
        if self._task is not None or self._store:
            raise RuntimeError(f"informer of {self.resource} has started: too late to reshape it")
        self._transform = transform
        self.metadata_only = metadata_only

    def add_event_handler(self, handler: EventHandler) -> None:
        """Subscribe; a handler added after the first sync is replayed the current objects."""
        self._handlers.append(handler)
        if self._synced.is_set():
            for obj in list(self._store.values()):
                try:
                    handler.on_add(obj, True)
                except Exception:
                    self._handler_failed(handler, "add", obj)

    # -- reads ------------------------------------------------------------------------------

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_for_sync(self) -> None:
        await self._synced.wait()

    def get(self, name: str, namespace: str | None = None) -> Object | None:
        """The cached object, or None. Treat it as read-only: it is shared."""
        return self._store.get(f"{namespace}/{name}" if namespace else name)

    def get_by_key(self, key: str) -> Object | None:
        return self._store.get(key)

    def list(self, namespace: str | None = None) -> builtins.list[Object]:
        if namespace is None:
            return list(self._store.values())
        return self.by_index(NAMESPACE_INDEX, namespace)

    def keys(self) -> builtins.list[str]:
        return list(self._store)

    def by_index(self, index: str, value: str) -> builtins.list[Object]:
        keys = self._indices[index].get(value)
        if keys is None:
            return []
        if isinstance(keys, str):
            return [self._store[keys]]
        return [self._store[k] for k in keys]

    def index_keys(self, index: str, value: str) -> builtins.list[str]:
        keys = self._indices[index].get(value)
        if keys is None:
            return []
        return [keys] if isinstance(keys, str) else sorted(keys)

    def index_sizes(self) -> dict[str, int]:
        """Number of index values per index (leak checks)."""
        return {name: len(idx) for name, idx in self._indices.items()}

    def __len__(self) -> int:
        return len(self._store)

    @property
    def resource_version(self) -> str | None:
        return self._resource_version

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"informer:{self.resource}")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def run(self) -> None:
        resync: asyncio.Task[None] | None = None
        if self.options.resync_period:
            resync = asyncio.create_task(self._resync_loop(self.options.resync_period))
        need_list = True
        try:
            while True:
                try:
                    if need_list:
                        await self._list_and_replace()
                        need_list = False
                    await self._watch_once()
                    self.last_error = None
                except ApiError as exc:
                    if exc.gone:
                        # The resourceVersion we hold was compacted: only a list recovers.
                        self.stats["relists_gone"] += 1
                        self._log.info("informer.relist", reason="410 Gone")
                        need_list = True
                        continue
                    await self._failed(exc, listing=need_list)
                except TimeoutError:
                    self.stats["idle_reconnects"] += 1
                    self._log.warning("informer.watch_idle", idle_timeout=self.options.idle_timeout)
                except (ConnectionError, aiohttp.ClientError, OSError) as exc:
                    await self._failed(exc, listing=need_list)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._log.exception("informer.unexpected_error")
                    await self._failed(exc, listing=need_list)
        finally:
            if resync is not None:
                resync.cancel()

    async def _failed(self, exc: BaseException, *, listing: bool) -> None:
        delay = self._backoff.next_delay()
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._log.warning(
            "informer.retry",
            phase="list" if listing else "watch",
            error=self.last_error,
            retry_in=round(delay, 2),
        )
        await asyncio.sleep(delay)

    async def _list_and_replace(self) -> None:
        self.stats["lists"] += 1
        first = not self._synced.is_set()
        items, rv = await self.client.list_all(
            self.resource,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            page_size=self.options.page_size,
            metadata_only=self.metadata_only,
            transform=self._prepare,
        )
        fresh = {object_key(obj): obj for obj in items}
        del items
        for key in [k for k in self._store if k not in fresh]:
            old = self._delete(key)
            if old is not None:
                self._notify_delete(old, True)
        for key, obj in fresh.items():
            old = self._store.get(key)
            if old is None:
                self._put(key, obj)
                self._notify_add(obj, first)
            elif _rv(old) != _rv(obj):
                self._put(key, obj)
                self._notify_update(old, obj)
        self._resource_version = rv
        if first:
            self._synced.set()
            self._log.debug("informer.synced", objects=len(self._store))

    async def _watch_once(self) -> None:
        self.stats["watches"] += 1
        lo, hi = self.options.watch_timeout
        async for batch in self.client.watch_batches(
            self.resource,
            self.namespace,
            resource_version=self._resource_version,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=random.randint(lo, hi),
            idle_timeout=self.options.idle_timeout,
            metadata_only=self.metadata_only,
        ):
            for event in batch:
                self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        raw: Object = event.get("object") or {}
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self._resource_version = rv
            return
        obj = self._prepare(raw)
        key = object_key(obj)
        if kind in ("ADDED", "MODIFIED"):
            old = self._store.get(key)
            self._put(key, obj)
            if old is None:
                self._notify_add(obj, False)
            else:
                self._notify_update(old, obj)
        elif kind == "DELETED":
            self._delete(key)
            self._notify_delete(obj, False)
        if rv:
            self._resource_version = rv

    def _prepare(self, item: Object) -> Object:
        """A served object as it is stored: with its apiVersion and kind, transformed."""
        if self.metadata_only:
            # PartialObjectMetadata: the served kind says nothing of the resource.
            item["apiVersion"] = self.resource.api_version
            item["kind"] = self.resource.kind
        else:
            item.setdefault("apiVersion", self.resource.api_version)
            item.setdefault("kind", self.resource.kind)
        return self._transform(item) if self._transform else item

    async def _resync_loop(self, period: float) -> None:
        await self._synced.wait()
        while True:
            await asyncio.sleep(period * random.uniform(0.9, 1.1))
            for obj in list(self._store.values()):
                self._notify_update(obj, obj)

    # -- delivery ---------------------------------------------------------------------------
    # One try per handler and event: an exception that escaped here would reach ``run``, which
    # backs off and replays the same event to every handler, forever (a poison object).

    def _notify_add(self, obj: Object, initial: bool) -> None:
        for h in self._handlers:
            try:
                h.on_add(obj, initial)
            except Exception:
                self._handler_failed(h, "add", obj)

    def _notify_update(self, old: Object, new: Object) -> None:
        for h in self._handlers:
            try:
                h.on_update(old, new)
            except Exception:
                self._handler_failed(h, "update", new)

    def _notify_delete(self, obj: Object, final_state_unknown: bool) -> None:
        for h in self._handlers:
            try:
                h.on_delete(obj, final_state_unknown)
            except Exception:
                self._handler_failed(h, "delete", obj)

    def _handler_failed(self, handler: EventHandler, event: str, obj: Object) -> None:
        name = handler_name(handler)
        self.stats["handler_errors"] += 1
        metrics.INFORMER_HANDLER_ERRORS.labels(str(self.resource), name, event).inc()
        self._log.exception(
            "informer.handler_error", handler=name, event_type=event, object=object_key(obj)
        )

    # -- store ------------------------------------------------------------------------------

    def _put(self, key: str, obj: Object) -> None:
        old = self._store.get(key)
        self._store[key] = obj
        for name, fn in self._indexers.items():
            index = self._indices[name]
            new_values = set(fn(obj))
            if old is not None:
                for value in set(fn(old)) - new_values:
                    _discard(index, value, key)
            for value in new_values:
                _add(index, value, key)

    def _delete(self, key: str) -> Object | None:
        old = self._store.pop(key, None)
        if old is not None:
            for name, fn in self._indexers.items():
                index = self._indices[name]
                for value in fn(old):
                    _discard(index, value, key)
        return old


def handler_name(handler: EventHandler) -> str:
    """The ``handler`` label of a handler's errors: its ``name`` attribute, else its class."""
    name = getattr(handler, "name", None)
    return name if isinstance(name, str) and name else type(handler).__name__


def _add(index: dict[str, str | set[str]], value: str, key: str) -> None:
    keys = index.get(value)
    if keys is None:
        index[value] = key
    elif isinstance(keys, str):
        if keys != key:
            index[value] = {keys, key}
    else:
        keys.add(key)


def _discard(index: dict[str, str | set[str]], value: str, key: str) -> None:
    keys = index.get(value)
    if keys is None:
        return
    if isinstance(keys, str):
        if keys == key:
            del index[value]
        return
    keys.discard(key)
    if len(keys) == 1:
        index[value] = next(iter(keys))
    elif not keys:
        del index[value]


def _rv(obj: Object) -> str | None:
    rv: str | None = (obj.get("metadata") or {}).get("resourceVersion")
    return rv
