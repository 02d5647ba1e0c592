"""Cache transforms: keep only the fields readers use, and share repeated strings.

An informer holds every object it watches for as long as it exists, so the bytes of a cached
object are paid once per object in the cluster. Most of an object as served is of no use to
a controller: ``managedFields``, fields the API server defaulted, status written by other
controllers. A :class:`Mask` names what to keep; :class:`StringPool` makes equal strings of
different objects (label values, image names, protocol names) one object.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from nexus.runtime.objects import Object

Transform = Callable[[Object], Object]

#: A mask: for each key to keep, ``True`` (keep the value whole) or the mask of the value.
#: A mask applies to every element of a list.
Mask = Mapping[str, "Mask | bool"]

#: What every cached object keeps of its metadata: its identity, what watches map from
#: (labels, owner references), what predicates and finalizer logic read.
METADATA: Mask = {
    "name": True,
    "namespace": True,
    "uid": True,
    "resourceVersion": True,
    "generation": True,
    "creationTimestamp": True,
    "labels": True,
    "ownerReferences": True,
    "finalizers": True,
    "deletionTimestamp": True,
    "deletionGracePeriodSeconds": True,
}

#: Values under these keys differ between objects (or between versions of one object): sharing
#: them would cost a pool entry each and save nothing. (Timestamps are not among them: they
#: have a resolution of one second, and objects created together share them.)
UNIQUE_VALUE_KEYS = frozenset({"uid", "resourceVersion", "clusterIP", "podIP", "continue"})


def strip_managed_fields(obj: Object) -> Object:
    """Drop ``metadata.managedFields`` (often half of an object's metadata)."""
    meta = obj.get("metadata")
    if meta is not None:
        meta.pop("managedFields", None)
    return obj


def prune(value: Any, mask: Mask | bool) -> Any:
    """``value`` with only what ``mask`` names (a new object; ``value`` is not modified).

    A value whose type does not match its mask (a scalar where the mask has a map) is kept as
    is, so that a comparison with it still sees the difference.
    """
    if mask is True:
        return value
    if isinstance(value, dict):
        assert not isinstance(mask, bool)
        out = {}
        for key, item in value.items():
            sub = mask.get(key)
            if sub is not None and sub is not False:
                out[key] = prune(item, sub)
        return out
    if isinstance(value, list):
        return [prune(item, mask) for item in value]
    return value


def merge_masks(masks: Iterable[Mask | bool]) -> Mask | bool:
    """The union of masks: a key kept by any of them is kept; ``True`` wins."""
    merged: dict[str, list[Mask | bool]] = {}
    for mask in masks:
        if mask is True:
            return True
        if mask is False:
            continue
        for key, sub in mask.items():
            merged.setdefault(key, []).append(sub)
    return {key: merge_masks(subs) for key, subs in merged.items()}


def mask_of(value: Any, *, whole: frozenset[str] = frozenset(), path: str = "") -> Mask | bool:
    """The mask that keeps every field of ``value`` (an example of what readers compare).

    Kept whole: maps at a path in ``whole`` (dotted, as ``.spec.selector``; list elements
    share their list's path), for readers that care about keys they did not set; and maps of
    scalars only (labels, selectors, limits), whose keys are often data rather than schema,
    so that an example with other keys does not drop them.
    """
    if isinstance(value, dict):
        if path in whole or not any(isinstance(v, dict | list) for v in value.values()):
            return True
        return {k: mask_of(v, whole=whole, path=f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return merge_masks([mask_of(v, whole=whole, path=path) for v in value]) if value else True
    return True


class FrozenDict(dict[str, Any]):
    """A map shared by several cached objects: it reads as a dict; changing it raises
    ``TypeError`` (copy it first: ``dict(value)``, ``copy.deepcopy(value)``)."""

    __slots__ = ()

    def _shared(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("this map is shared by cached objects; copy it before changing it")

    __setitem__ = __delitem__ = __ior__ = _shared
    clear = pop = popitem = setdefault = update = _shared

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class FrozenList(list[Any]):
    """A list shared by several cached objects; see :class:`FrozenDict`."""

    __slots__ = ()

    def _shared(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("this list is shared by cached objects; copy it before changing it")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _shared
    append = extend = insert = pop = remove = clear = sort = reverse = _shared

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return copy.deepcopy(list(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


# Keys of scalars in a subtree's key, so that True, 1 and 1.0 (equal in Python) stay apart.
_TRUE, _FALSE, _NULL = object(), object(), object()


class StringPool:
    """Makes equal strings, and equal subtrees, of different cached objects one object.

    ``json`` decoding creates every key and value anew for each object: the label key
    ``app.kubernetes.io/name`` of a thousand objects is a thousand strings, and the same pod
    template a thousand trees. :meth:`share_tree` rebuilds an object with the pool's copy of
    each map key and short string value (not those under :data:`UNIQUE_VALUE_KEYS`);
    :meth:`share_frozen` also replaces each map and list by the pool's equal one, a
    :class:`FrozenDict` / :class:`FrozenList`, so that readers cannot change what other
    objects share.

    Guarantees: the result equals the input; the pool does not keep anything alive for long
    after the last object using it is gone: when a table has doubled since its last sweep,
    what only the pool still references is dropped (an O(table) sweep, amortised O(1) per
    insertion); a subtree met again is found by its JSON text, for at most ``memo_size`` of
    them until the next sweep. Not thread-safe: one event loop.
    """

    def __init__(
        self, *, max_length: int = 128, min_sweep: int = 4096, memo_size: int = 512
    ) -> None:
        self.max_length = max_length
        self.memo_size = memo_size
        self._pool: dict[str, str] = {}
        self._trees: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
        # JSON of a subtree met at least twice -> its entry in ``_trees``.
        self._by_json: dict[bytes, tuple[Any, tuple[Any, ...]]] = {}
        self._min_sweep = min_sweep
        self._sweep_at = min_sweep
        self._trees_sweep_at = min_sweep
        self._floors = _pooled_refcounts()

    def __len__(self) -> int:
        return len(self._pool)

    @property
    def subtrees(self) -> int:
        return len(self._trees)

    def share(self, s: str) -> str:
        got = self._pool.get(s)
        if got is not None:
            return got
        if len(s) > self.max_length:
            return s
        self._pool[s] = s
        if len(self._pool) >= self._sweep_at:
            self.sweep()
        return s

    def share_tree(self, value: Any, key: str | None = None) -> Any:
        """``value`` rebuilt with shared keys and string values."""
        if isinstance(value, str):
            return value if key in UNIQUE_VALUE_KEYS else self.share(value)
        if isinstance(value, dict):
            share = self.share
            return {share(k): self.share_tree(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.share_tree(v, key) for v in value]
        return value

    def share_frozen(self, value: Any) -> Any:
        """``value`` with every map and list replaced by the pool's equal, frozen one."""
        return self._canonical(value, None)[0]

    def _canonical(self, value: Any, key: str | None) -> tuple[Any, Any]:
        """(shared value, its key in the subtree table)."""
        if isinstance(value, str):
            s = value if key in UNIQUE_VALUE_KEYS else self.share(value)
            return s, s
        if isinstance(value, dict | list):
            if not value:
                return self._canonical_container(value, key)[0]
            # A subtree met before (the pod template of every tenant's node, say) is found by
            # its JSON at C speed, instead of being rebuilt node by node to be looked up.
            # Only subtrees seen twice are remembered so, and at most ``memo_size`` of them
            # (until the next sweep): the keys are JSON text, and the subtrees that one
            # tenant's objects repeat (their labels) would cost a few KB per tenant. The
            # widely shared ones (a pod template) come back first and are in by then.
            # A list's strings are pooled or not by the key it is under, so that is part of
            # its memo key. A hit is checked for equality: JSON cannot tell NaN from null.
            try:
                text = orjson.dumps(value)
            except (TypeError, orjson.JSONEncodeError):  # not JSON (a huge int, a set)
                return self._canonical_container(value, key)[0]
            if isinstance(value, list) and key in UNIQUE_VALUE_KEYS:
                text = b"!" + text
            got = self._by_json.get(text)
            if got is not None and got[0] == value:
                return got
            entry, known = self._canonical_container(value, key)
            if known and len(self._by_json) < self.memo_size:
                self._by_json[text] = entry
            return entry
        return self._canonical_scalar(value)

    def _canonical_container(self, value: Any, key: str | None) -> tuple[tuple[Any, Any], bool]:
        """(the entry of a map or list, whether the table had it already)."""
        if isinstance(value, dict):
            share = self.share
            items = {}
            parts: list[Any] = ["{"]
            for raw_key, v in value.items():
                k = share(raw_key)
                items[k], sub = self._canonical(v, k)
                parts += (k, sub)
            return self._intern_tree(tuple(parts), items, FrozenDict)
        elems = []
        parts = ["["]
        for v in value:
            elem, sub = self._canonical(v, key)
            elems.append(elem)
            parts.append(sub)
        return self._intern_tree(tuple(parts), elems, FrozenList)

    @staticmethod
    def _canonical_scalar(value: Any) -> tuple[Any, Any]:
        if value is True:
            return value, _TRUE
        if value is False:
            return value, _FALSE
        if value is None:
            return value, _NULL
        if isinstance(value, float):
            return value, ("f", value)
        return value, value

    def _intern_tree(
        self, tree_key: tuple[Any, ...], content: Any, frozen: type[Any]
    ) -> tuple[tuple[Any, Any], bool]:
        got = self._trees.get(tree_key)
        if got is not None:
            return got, True
        entry = (frozen(content), tree_key)
        self._trees[tree_key] = entry
        if len(self._trees) >= self._trees_sweep_at:
            self.sweep()
        return entry, False

    def sweep(self) -> int:
        """Drops what nothing but the pool references; returns how many entries."""
        # The JSON memo is a shortcut into the subtree table and holds its entries: forget it
        # first, so that the reference counts below see only the table's references.
        self._by_json.clear()
        floors = self._floors
        if floors is None:
            dropped = len(self._pool) + len(self._trees)
            self._pool.clear()  # without reference counts: start a new generation
            self._trees.clear()
        else:
            string_floor, tree_floor = floors
            # Subtrees first: a dropped subtree releases the strings (and subtrees) it holds.
            dropped = 0
            while True:
                dead = [k for k, (v, _) in self._trees.items() if sys.getrefcount(v) <= tree_floor]
                for k in dead:
                    del self._trees[k]
                dropped += len(dead)
                if not dead:
                    break
            unused = [s for s in self._pool if sys.getrefcount(s) <= string_floor]
            for s in unused:
                del self._pool[s]
            dropped += len(unused)
        self._sweep_at = max(self._min_sweep, 2 * len(self._pool))
        self._trees_sweep_at = max(self._min_sweep, 2 * len(self._trees))
        return dropped


def _pooled_refcounts() -> tuple[int, int] | None:
    """References to a string, and to a subtree, that only the pool holds, as counted by
    :meth:`StringPool.sweep` while it iterates over its tables."""
    getrefcount = getattr(sys, "getrefcount", None)
    if getrefcount is None:
        return None
    strings: dict[str, str] = {}
    trees: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
    _add_probes(strings, trees)
    string_refs = [getrefcount(s) for s in strings]
    tree_refs = [getrefcount(v) for k, (v, _) in trees.items()]
    return int(string_refs[0]), int(tree_refs[0])


def _add_probes(
    strings: dict[str, str], trees: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]]
) -> None:
    # New objects, referenced only by the tables once this returns.
    s = "-".join(("pool", "probe", str(id(strings))))
    strings[s] = s
    value = ["-".join(("tree", "probe", str(id(trees))))]
    key = ("probe",)
    trees[key] = (value, key)


def compose(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order."""

    def run(obj: Object) -> Object:
        for t in transforms:
            obj = t(obj)
        return obj

    return run


def keep(
    mask: Mask, pool: StringPool | None = None, *, frozen: frozenset[str] = frozenset()
) -> Transform:
    """A transform keeping ``mask`` of each object (``apiVersion`` and ``kind`` always),
    with its strings shared through ``pool``; ``metadata.labels`` and the values of the
    top-level keys in ``frozen`` (such as ``spec``) are shared with equal ones of other
    objects (:meth:`StringPool.share_frozen`)."""
    full: dict[str, Mask | bool] = {"apiVersion": True, "kind": True, **mask}

    def run(obj: Object) -> Object:
        out: Object = prune(obj, full)
        if pool is None:
            return out
        shared_out: Object = {}
        for k, v in out.items():
            if k in frozen:
                shared_out[pool.share(k)] = pool.share_frozen(v)
            elif k == "metadata" and isinstance(v, dict):
                meta = {pool.share(mk): pool.share_tree(mv, mk) for mk, mv in v.items()}
                if isinstance(meta.get("labels"), dict):
                    # The children of one tenant carry the same labels.
                    meta["labels"] = pool.share_frozen(meta["labels"])
                shared_out["metadata"] = meta
            else:
                shared_out[pool.share(k)] = pool.share_tree(v, k)
        return shared_out

    return run


def shared(pool: StringPool) -> Transform:
    """A transform dropping ``managedFields`` and sharing strings through ``pool``."""

    def run(obj: Object) -> Object:
        out: Object = pool.share_tree(strip_managed_fields(obj))
        return out

    return run
