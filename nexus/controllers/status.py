"""The status both reconcilers write: phase, message, observedGeneration, a Ready condition."""

from __future__ import annotations

from nexus.runtime.objects import Object, conditions_equal, set_condition


def phase_status(
    obj: Object, *, phase: str, ready: bool, reason: str, message: str, now: str
) -> Object:
    """The common part of a status; the Ready condition keeps its transition time if unchanged.

    ``now`` (a ``metav1.Time``) stamps a Ready condition whose status changes.
    """
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
            now=now,
        ),
    }


def status_unchanged(current: Object, status: Object) -> bool:
    """Whether writing ``status`` would change nothing (condition timestamps aside)."""
    return all(
        current.get(k) == v for k, v in status.items() if k != "conditions"
    ) and conditions_equal(current.get("conditions"), status.get("conditions"))
