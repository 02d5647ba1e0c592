"""Small helpers for objects as dicts: owner references, conditions, timestamps."""

from __future__ import annotations

import datetime as dt
from typing import Any

Object = dict[str, Any]


def now_rfc3339() -> str:
    """A ``metav1.Time``: RFC 3339, seconds precision, UTC."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as a ``metav1.Time``."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """A ``metav1.MicroTime``: RFC 3339 with microseconds, UTC."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def owner_reference(
    owner: Object, *, controller: bool = True, block_owner_deletion: bool = True
) -> Object:
    """An ownerReference to ``owner`` (same namespace or cluster-scoped owners only)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": block_owner_deletion,
    }


def find_condition(conditions: list[Object] | None, type_: str) -> Object | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(
    conditions: list[Object] | None,
    type_: str,
    status: str,
    *,
    reason: str,
    message: str,
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[Object]:
    """A new condition list with ``type_`` set (``meta.SetStatusCondition``).

    ``lastTransitionTime`` changes only when the status does, so rewriting an unchanged
    condition produces an identical list (and no API write, if the caller compares); a new
    transition is stamped ``now`` (a ``metav1.Time``; default: the current time).
    """
    result = [dict(c) for c in conditions or () if c.get("type") != type_]
    old = find_condition(conditions, type_)
    cond: Object = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (
            old["lastTransitionTime"]
            if old is not None and old.get("status") == status and old.get("lastTransitionTime")
            else now or now_rfc3339()
        ),
    }
    if observed_generation is not None:
        cond["observedGeneration"] = observed_generation
    index = next((i for i, c in enumerate(conditions or ()) if c.get("type") == type_), len(result))
    result.insert(index, cond)
    return result


def conditions_equal(a: list[Object] | None, b: list[Object] | None) -> bool:
    """Equal ignoring ``lastTransitionTime``."""

    def strip(cs: list[Object] | None) -> list[Object]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or ()]

    return strip(a) == strip(b)
