"""The pods of tenant nodes: how to select them, and which one serves a tenant.

Every pod of a node Deployment carries ``app.kubernetes.io/name: astromesh-node``; one
label-scoped informer on that selector holds them all, and everything that looks at node pods
(the ``pod`` node endpoint, the node's availability, waking agents when a node restarts)
reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nexus.node.names import NODE_NAME

#: The label every node pod carries (with the tenant's own label beside it).
NODE_APP_LABEL = "app.kubernetes.io/name"
NODE_POD_LABELS = {NODE_APP_LABEL: NODE_NAME}
#: The selector of the node-pod informer.
NODE_POD_SELECTOR = f"{NODE_APP_LABEL}={NODE_NAME}"

Pod = Mapping[str, Any]


def is_node_pod(pod: Pod) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(NODE_APP_LABEL) == NODE_NAME)


def is_terminating(pod: Pod) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_ready(pod: Pod) -> bool:
    """The pod's Ready condition is True: its readiness probe passes."""
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def pod_ip(pod: Pod) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip else None


def restart_count(pod: Pod) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def serving_pod(pods: Iterable[Pod]) -> Pod | None:
    """The node pod that answers for a tenant: Ready, with an address, not going away.

    During a rollout two pods may be Ready for a moment: the newest wins, as it is the one
    that stays.
    """
    candidates = [
        p for p in pods if is_node_pod(p) and not is_terminating(p) and is_ready(p) and pod_ip(p)
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]),
    )
