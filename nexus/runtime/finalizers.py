"""Finalizer helpers that cannot clobber another controller's finalizer.

A merge patch of the whole ``metadata.finalizers`` list written from a stale copy silently
drops or re-adds other controllers' entries (kopf #1106, controller-runtime users alike). These
helpers send JSON patches guarded by ``test`` operations instead: adding is conditional on the
resourceVersion the list was read at, removing on the exact entry at the exact index. A failed
guard (422 or 409) re-reads the object and tries again.
"""

from __future__ import annotations

from typing import Any, Protocol

from nexus.runtime.client import ApiError, PatchType
from nexus.runtime.resource import Resource

Object = dict[str, Any]
_ATTEMPTS = 5


class FinalizerClient(Protocol):
    """The calls the helpers make (:class:`~nexus.runtime.client.Client` has them all)."""

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Object: ...

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> Object | None: ...

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
    ) -> Object: ...


def has_finalizer(obj: Object, name: str) -> bool:
    return name in ((obj.get("metadata") or {}).get("finalizers") or ())


def is_being_deleted(obj: Object) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


async def add_finalizer(client: FinalizerClient, res: Resource, obj: Object, name: str) -> Object:
    """Ensure ``name`` is in the object's finalizers; returns the object as written."""
    current = obj
    for attempt in range(_ATTEMPTS):
        meta = current.get("metadata") or {}
        finalizers = meta.get("finalizers")
        if finalizers and name in finalizers:
            return current
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        ]
        if finalizers:
            ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": name})
        else:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [name]})
        try:
            return await client.patch(
                res, meta["name"], ops, meta.get("namespace"), patch_type="json"
            )
        except ApiError as exc:
            if not (exc.invalid or exc.conflict) or attempt == _ATTEMPTS - 1:
                raise
            current = await client.get(res, meta["name"], meta.get("namespace"))
    raise AssertionError("unreachable")


async def remove_finalizer(
    client: FinalizerClient, res: Resource, obj: Object, name: str
) -> Object | None:
    """Remove ``name`` only; returns the object as written, or None if it is gone."""
    current: Object | None = obj
    for attempt in range(_ATTEMPTS):
        assert current is not None
        meta = current.get("metadata") or {}
        finalizers = meta.get("finalizers") or []
        if name not in finalizers:
            return current
        idx = finalizers.index(name)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{idx}", "value": name},
            {"op": "remove", "path": f"/metadata/finalizers/{idx}"},
        ]
        try:
            return await client.patch(
                res, meta["name"], ops, meta.get("namespace"), patch_type="json"
            )
        except ApiError as exc:
            if exc.not_found:
                return None
            if not (exc.invalid or exc.conflict) or attempt == _ATTEMPTS - 1:
                raise
            current = await client.get_or_none(res, meta["name"], meta.get("namespace"))
            if current is None:
                return None
    raise AssertionError("unreachable")
