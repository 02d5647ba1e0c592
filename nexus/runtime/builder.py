"""A fluent builder for controllers, as controller-runtime's ``builder`` package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from nexus.runtime.controller import Controller, ControllerOptions
from nexus.runtime.handler import Mapper, enqueue_for_object, enqueue_for_owner
from nexus.runtime.manager import Manager
from nexus.runtime.predicates import Predicate
from nexus.runtime.reconcile import Reconciler
from nexus.runtime.resource import Resource


@dataclass(frozen=True)
class _Watch:
    resource: Resource
    mapper: Mapper
    predicates: tuple[Predicate, ...]
    namespace: str | None
    label_selector: str | None


class Builder:
    """Declares what a controller reconciles and what it watches, then registers it.

    ``Builder(mgr).for_(TENANTS, namespace="nexus-system").owns(DEPLOYMENTS).complete(r)``
    creates a controller named after the primary kind, whose informers come from the manager's
    shared cache (one informer per resource/namespace/selector, whoever asks).
    """

    def __init__(self, manager: Manager) -> None:
        self._mgr = manager
        self._name: str | None = None
        self._for: _Watch | None = None
        self._watches: list[_Watch] = []
        self._options = ControllerOptions()

    def named(self, name: str) -> Self:
        self._name = name
        return self

    def for_(
        self,
        resource: Resource,
        *predicates: Predicate,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> Self:
        """The primary resource: each of its events reconciles that object."""
        if self._for is not None:
            raise ValueError("for_() may be called only once")
        self._for = _Watch(resource, enqueue_for_object, predicates, namespace, label_selector)
        return self

    def owns(
        self,
        resource: Resource,
        *predicates: Predicate,
        namespace: str | None = None,
        label_selector: str | None = None,
        only_controller: bool = True,
    ) -> Self:
        """Children whose controller ownerReference points at the primary resource."""
        if self._for is None:
            raise ValueError("call for_() before owns()")
        mapper = enqueue_for_owner(self._for.resource, only_controller=only_controller)
        self._watches.append(_Watch(resource, mapper, predicates, namespace, label_selector))
        return self

    def watches(
        self,
        resource: Resource,
        mapper: Mapper,
        *predicates: Predicate,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> Self:
        """Any resource, mapped to requests by ``mapper``."""
        self._watches.append(_Watch(resource, mapper, predicates, namespace, label_selector))
        return self

    def with_options(self, options: ControllerOptions) -> Self:
        self._options = options
        return self

    def complete(self, reconciler: Reconciler) -> Controller:
        if self._for is None:
            raise ValueError("a controller needs for_()")
        name = self._name or self._for.resource.kind.lower()
        ctrl = Controller(name, reconciler, self._options)
        for w in (self._for, *self._watches):
            informer = self._mgr.cache.informer_for(
                w.resource, namespace=w.namespace, label_selector=w.label_selector
            )
            ctrl.watch(informer, w.mapper, *w.predicates)
        self._mgr.add(ctrl)
        return ctrl
