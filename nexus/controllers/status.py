"""The status both reconcilers write: phase, message, observedGeneration, a Ready condition."""

from __future__ import annotations

from typing import Any

from nexus.runtime.objects import conditions_equal, set_condition

Object = dict[str, Any]


def phase_status(obj: Object, *, phase: str, ready: bool, reason: str, message: str) -> Object:
    """The common part of a status; the Ready condition keeps its transition time if unchanged."""
    gen = obj["metadata"].get("generation")
    return {
        "phase": phase,
        "message": message,
        "observedGeneration": gen,
        "conditions": set_condition(
            (obj.get("status") or {}).get("conditions"),
            "Ready",
            "True" if ready else "False",
            reason=reason,
            message=message,
            observed_generation=gen,
        ),
    }


def status_unchanged(current: Object, status: Object) -> bool:
    """Whether writing ``status`` would change nothing (condition timestamps aside)."""
    return all(
        current.get(k) == v for k, v in status.items() if k != "conditions"
    ) and conditions_equal(current.get("conditions"), status.get("conditions"))
