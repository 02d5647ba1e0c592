"""Map watched objects to the requests they should trigger (controller-runtime's ``handler``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nexus.runtime.objects import Object
from nexus.runtime.reconcile import Request
from nexus.runtime.resource import Resource

#: Turns an object into zero or more requests. Called on the event loop: must not block.
Mapper = Callable[[Object], Iterable[Request]]


def enqueue_for_object(obj: Object) -> Iterable[Request]:
    """The object itself (``For`` in controller-runtime)."""
    meta = obj.get("metadata") or {}
    return (Request(name=meta["name"], namespace=meta.get("namespace")),)


def enqueue_for_owner(owner: Resource, *, only_controller: bool = True) -> Mapper:
    """The owner named by the object's ownerReferences (``Owns``).

    Owner references cannot cross namespaces, so the owner is looked up in the object's own
    namespace (or cluster scope for a cluster-scoped owner).
    """

    def mapper(obj: Object) -> Iterable[Request]:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") if owner.namespaced else None
        for ref in meta.get("ownerReferences") or ():
            if only_controller and not ref.get("controller"):
                continue
            group = ref.get("apiVersion", "").rpartition("/")[0]
            if ref.get("kind") == owner.kind and group == owner.group:
                yield Request(name=ref["name"], namespace=ns)

    return mapper


def enqueue_from_labels(name_label: str, namespace_label: str | None = None) -> Mapper:
    """The object named by the child's labels: for owners in another namespace (or a
    namespaced owner of a cluster-scoped child), where owner references are not allowed."""

    def mapper(obj: Object) -> Iterable[Request]:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        name = labels.get(name_label)
        if not name:
            return ()
        ns = labels.get(namespace_label) if namespace_label else None
        return (Request(name=name, namespace=ns),)

    return mapper


def enqueue_from_func(fn: Callable[[Object], Iterable[Request]]) -> Mapper:
    """Any mapping (``EnqueueRequestsFromMapFunc``)."""
    return fn
