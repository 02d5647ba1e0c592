"""Whether a tenant's node answers, from its Deployment's status, and why not.

The Deployment says *whether* (kube-controller-manager counts a pod available once its
readiness probe passes); the node's pods say *why not*: a pod that cannot be scheduled, an
image that cannot be pulled, a container that crashes. Every state on the normal way to
available has one message, so that a node starting up costs no status write per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nexus.node import NODE_NAME
from nexus.node.pods import is_node_pod, is_terminating, restart_count

Object = Mapping[str, Any]

#: The one message of a node on its way up (no pod yet, pod starting, probe not yet passed).
STARTING = f"waiting for the {NODE_NAME} pod to become ready"
#: Container states on the normal way up; any other waiting reason is a problem worth showing.
_STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing", ""})
_MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class NodeAvailability:
    """The ``NodeAvailable`` condition of a tenant: its status, reason and message."""

    available: bool
    reason: str
    message: str

    @property
    def status(self) -> str:
        return "True" if self.available else "False"


AVAILABLE = NodeAvailability(True, "MinimumReplicasAvailable", f"the {NODE_NAME} pod is ready")


def node_availability(deployment: Object | None, pods: Iterable[Object]) -> NodeAvailability:
    """The availability of the node whose Deployment is ``deployment`` (None: not there yet)
    and whose pods (of its namespace) are ``pods``."""
    status: Object = (deployment or {}).get("status") or {}
    if deployment is not None and _available(status):
        return AVAILABLE
    return _why_not(status, [p for p in pods if is_node_pod(p)])


def _available(status: Object) -> bool:
    if int(status.get("availableReplicas") or 0) < 1:
        return False
    return _condition(status, "Available").get("status") != "False"


def _why_not(status: Object, pods: list[Object]) -> NodeAvailability:
    failure = _condition(status, "ReplicaFailure")
    if failure.get("status") == "True":
        why = failure.get("message") or failure.get("reason") or "no reason given"
        return _problem("PodCreationFailed", f"the {NODE_NAME} pod cannot be created: {why}")
    live = [p for p in pods if not is_terminating(p)]
    pod = max(live, key=_age_key) if live else None
    if pod is not None:
        problem = _pod_problem(pod)
        if problem is not None:
            return problem
    progressing = _condition(status, "Progressing")
    if progressing.get("status") == "False":
        return _problem(
            "ProgressDeadlineExceeded",
            f"the {NODE_NAME} Deployment made no progress: {progressing.get('message') or ''}",
        )
    return NodeAvailability(False, "NodeStarting", STARTING)


def _pod_problem(pod: Object) -> NodeAvailability | None:
    name = pod["metadata"]["name"]
    st: Object = pod.get("status") or {}
    if st.get("phase") == "Failed":
        why = st.get("message") or st.get("reason") or "no reason given"
        return _problem("PodFailed", f"pod {name} failed: {why}")
    scheduled = _condition(st, "PodScheduled")
    if scheduled.get("status") == "False":
        why = scheduled.get("message") or scheduled.get("reason") or "no node fits"
        return _problem("Unschedulable", f"pod {name} is Pending and cannot be scheduled: {why}")
    for kind in ("initContainerStatuses", "containerStatuses"):
        for cs in st.get(kind) or ():
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if waiting and reason not in _STARTING_REASONS:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                restarts = restart_count(pod)
                again = f" (restarted {restarts} times)" if restarts else ""
                return _problem(
                    "ContainerWaiting",
                    f"pod {name}: container {cs.get('name')} is waiting: {reason}{detail}{again}",
                )
    return None


def _problem(reason: str, message: str) -> NodeAvailability:
    return NodeAvailability(False, reason, message[:_MAX_MESSAGE])


def _age_key(pod: Object) -> tuple[str, str]:
    meta = pod["metadata"]
    return (meta.get("creationTimestamp") or "", meta["name"])


def _condition(status: Object, type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}
