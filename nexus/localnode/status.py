"""Pod status in the shape the kubelet writes it, so that controllers read it as usual."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Object = dict[str, Any]

#: The order the kubelet lists pod conditions in.
CONDITION_ORDER = ("Initialized", "Ready", "ContainersReady", "PodScheduled")


def rfc3339(ts: float | None = None) -> str:
    """A ``metav1.Time``: seconds precision, UTC."""
    when = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(ts: float | None = None) -> str:
    """A ``metav1.MicroTime`` (Lease renewTime)."""
    when = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Conditions:
    """Pod conditions keyed by type; ``lastTransitionTime`` changes only when status does.

    Seeded from the pod's current status, so that an agent restart does not reset the
    transition times other controllers (a Deployment's ``minReadySeconds``) rely on.
    """

    items: dict[str, Object] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: Object | None) -> Conditions:
        items = {
            str(c["type"]): dict(c) for c in (status or {}).get("conditions") or () if "type" in c
        }
        return cls(items)

    def set(self, type_: str, status: bool, reason: str = "", message: str = "") -> None:
        value = "True" if status else "False"
        old = self.items.get(type_)
        cond: Object = {"type": type_, "status": value}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        cond["lastProbeTime"] = None
        cond["lastTransitionTime"] = (
            old["lastTransitionTime"]
            if old is not None and old.get("status") == value and old.get("lastTransitionTime")
            else rfc3339()
        )
        self.items[type_] = cond

    def get(self, type_: str) -> Object | None:
        return self.items.get(type_)

    def as_list(self) -> list[Object]:
        known = [self.items[t] for t in CONDITION_ORDER if t in self.items]
        return known + [c for t, c in sorted(self.items.items()) if t not in CONDITION_ORDER]


@dataclass
class ContainerStatus:
    """What the agent knows of a pod's one container."""

    name: str
    image: str
    state: Object = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Object = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    container_id: str = ""

    def as_dict(self) -> Object:
        out: Object = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def skipped_init_status(c: Object, finished_at: str) -> Object:
    """The status of an init container the agent did not run (see ``podspec.init_containers``)."""
    return {
        "name": str(c.get("name") or "init"),
        "image": str(c.get("image") or ""),
        "imageID": "",
        "state": {
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "message": "not run by the local node agent (no images; the pod's folders "
                "stand in for its volumes)",
                "startedAt": finished_at,
                "finishedAt": finished_at,
            }
        },
        "lastState": {},
        "ready": True,
        "restartCount": 0,
    }


def phase(container: ContainerStatus) -> str:
    """``Pending`` until the container first ran, then ``Running`` (restartPolicy Always)."""
    if "running" in container.state or container.restart_count > 0 or container.last_state:
        return "Running"
    return "Pending"


def pod_status(
    *,
    container: ContainerStatus,
    conditions: Conditions,
    host_ip: str,
    pod_ip: str,
    start_time: str,
    init_containers: list[Object] | None = None,
) -> Object:
    """The status fields the kubelet owns, for a merge patch of ``pods/status``."""
    out: Object = {
        "phase": phase(container),
        "conditions": conditions.as_list(),
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": [container.as_dict()],
    }
    if init_containers:
        out["initContainerStatuses"] = init_containers
    return out


def unschedulable(message: str) -> Object:
    """The ``PodScheduled`` condition a scheduler writes on a pod it cannot place."""
    return {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": None,
        "lastTransitionTime": rfc3339(),
    }
