"""Event filters, as controller-runtime's ``predicate`` package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nexus.runtime.objects import Object


class Predicate(Protocol):
    """Decides whether an event should enqueue a request. Must be cheap and pure."""

    def create(self, obj: Object) -> bool: ...
    def update(self, old: Object, new: Object) -> bool: ...
    def delete(self, obj: Object) -> bool: ...


def _meta(obj: Object) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


@dataclass(frozen=True)
class Funcs:
    """A predicate from optional callables; a missing callable lets the event through."""

    on_create: Callable[[Object], bool] | None = None
    on_update: Callable[[Object, Object], bool] | None = None
    on_delete: Callable[[Object], bool] | None = None

    def create(self, obj: Object) -> bool:
        return self.on_create(obj) if self.on_create else True

    def update(self, old: Object, new: Object) -> bool:
        return self.on_update(old, new) if self.on_update else True

    def delete(self, obj: Object) -> bool:
        return self.on_delete(obj) if self.on_delete else True


class _UpdateOnly:
    def create(self, obj: Object) -> bool:
        return True

    def delete(self, obj: Object) -> bool:
        return True


class GenerationChanged(_UpdateOnly):
    """Passes updates that change ``metadata.generation`` (spec changes on CRDs with status).

    Caveat: status and metadata writes do not bump the generation, so a deletion timestamp
    or a finalizer change does not pass; combine with :class:`Or` where that matters.
    """

    def update(self, old: Object, new: Object) -> bool:
        return _meta(old).get("generation") != _meta(new).get("generation")


class ResourceVersionChanged(_UpdateOnly):
    """Drops resync updates (same resourceVersion)."""

    def update(self, old: Object, new: Object) -> bool:
        return _meta(old).get("resourceVersion") != _meta(new).get("resourceVersion")


class LabelChanged(_UpdateOnly):
    """Passes updates that change ``metadata.labels``."""

    def update(self, old: Object, new: Object) -> bool:
        return _meta(old).get("labels") != _meta(new).get("labels")


class AnnotationChanged(_UpdateOnly):
    """Passes updates that change ``metadata.annotations``."""

    def update(self, old: Object, new: Object) -> bool:
        return _meta(old).get("annotations") != _meta(new).get("annotations")


class DeletionOrFinalizersChanged(_UpdateOnly):
    """Passes updates that start a deletion or change the finalizers."""

    def update(self, old: Object, new: Object) -> bool:
        o, n = _meta(old), _meta(new)
        return o.get("deletionTimestamp") != n.get("deletionTimestamp") or o.get(
            "finalizers"
        ) != n.get("finalizers")


class And:
    """Passes an event only if every predicate passes it."""

    def __init__(self, *preds: Predicate) -> None:
        self.preds = preds

    def create(self, obj: Object) -> bool:
        return all(p.create(obj) for p in self.preds)

    def update(self, old: Object, new: Object) -> bool:
        return all(p.update(old, new) for p in self.preds)

    def delete(self, obj: Object) -> bool:
        return all(p.delete(obj) for p in self.preds)


class Or:
    """Passes an event if any predicate passes it."""

    def __init__(self, *preds: Predicate) -> None:
        self.preds = preds

    def create(self, obj: Object) -> bool:
        return any(p.create(obj) for p in self.preds)

    def update(self, old: Object, new: Object) -> bool:
        return any(p.update(old, new) for p in self.preds)

    def delete(self, obj: Object) -> bool:
        return any(p.delete(obj) for p in self.preds)


class Not:
    """Inverts a predicate."""

    def __init__(self, pred: Predicate) -> None:
        self.pred = pred

    def create(self, obj: Object) -> bool:
        return not self.pred.create(obj)

    def update(self, old: Object, new: Object) -> bool:
        return not self.pred.update(old, new)

    def delete(self, obj: Object) -> bool:
        return not self.pred.delete(obj)
