"""What the agent reads from a pod: its one container, ports, environment and grace period."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

Object = dict[str, Any]

#: The kubelet's default ``terminationGracePeriodSeconds``.
DEFAULT_GRACE = 30.0
#: Where a container listens when its spec names no port (the astromesh node's port).
DEFAULT_PORT = 8000


def meta(pod: Object) -> Object:
    m: Object = pod.get("metadata") or {}
    return m


def spec(pod: Object) -> Object:
    s: Object = pod.get("spec") or {}
    return s


def uid(pod: Object) -> str:
    return str(meta(pod).get("uid") or "")


def key(pod: Object) -> str:
    m = meta(pod)
    return f"{m.get('namespace')}/{m.get('name')}"


def node_name(pod: Object) -> str:
    return str(spec(pod).get("nodeName") or "")


def deleting(pod: Object) -> bool:
    return bool(meta(pod).get("deletionTimestamp"))


def unsupported(pod: Object) -> str | None:
    """Why this agent cannot run the pod, or None. It runs pods of exactly one container."""
    s = spec(pod)
    containers = s.get("containers") or []
    if len(containers) != 1:
        return f"the local node agent runs pods of one container, not {len(containers)}"
    return None


def init_containers(pod: Object) -> list[Object]:
    """The pod's init containers. The agent does not run them: it has no images, and the
    only init container of a node pod seeds its config volume from the image, which a local
    process does not need (it gets a config folder of its own). They are reported completed."""
    return [c for c in spec(pod).get("initContainers") or () if isinstance(c, dict)]


def empty_dir_mounts(pod: Object, c: Object) -> dict[str, str]:
    """Mount path -> volume name of the container's ``emptyDir`` volumes.

    A local process shares the host's filesystem, so a volume is a folder of the pod instead,
    and environment values that point into a mount path are pointed into that folder.
    """
    empty = {
        str(v.get("name"))
        for v in spec(pod).get("volumes") or ()
        if isinstance(v, dict) and "emptyDir" in v
    }
    return {
        str(m["mountPath"]).rstrip("/") or "/": str(m["name"])
        for m in c.get("volumeMounts") or ()
        if m.get("name") in empty and m.get("mountPath")
    }


def relocate(value: str, mounts: Mapping[str, Path]) -> str:
    """``value`` with a leading mount path replaced by its local folder (longest match)."""
    for path in sorted(mounts, key=len, reverse=True):
        if value == path or value.startswith(path.rstrip("/") + "/"):
            return str(mounts[path]) + value[len(path) :]
    return value


def container(pod: Object) -> Object:
    c: Object = (spec(pod).get("containers") or [{}])[0]
    return c


def ports(c: Object) -> dict[str, int]:
    """Named container ports (for probes that name theirs)."""
    return {
        str(p["name"]): int(p["containerPort"])
        for p in c.get("ports") or ()
        if p.get("name") and p.get("containerPort")
    }


def serving_port(c: Object) -> int:
    """The port the process listens on: the first TCP container port."""
    for p in c.get("ports") or ():
        if p.get("containerPort") and (p.get("protocol") or "TCP") == "TCP":
            return int(p["containerPort"])
    return DEFAULT_PORT


def grace_period(pod: Object) -> float:
    """Seconds between SIGTERM and SIGKILL when the pod is deleted."""
    m, s = meta(pod), spec(pod)
    for value in (m.get("deletionGracePeriodSeconds"), s.get("terminationGracePeriodSeconds")):
        if value is not None:
            return float(value)
    return DEFAULT_GRACE


def environment(
    pod: Object, c: Object, pod_ip: str, host_ip: str
) -> tuple[dict[str, str], list[str]]:
    """The container's ``env``: literal values and the downward API's ``fieldRef``s.

    Returns ``(variables, skipped)``; ``skipped`` names the variables whose source
    (Secrets, ConfigMaps, resource fields) the agent does not resolve.
    """
    m, s = meta(pod), spec(pod)
    fields: Mapping[str, str] = {
        "metadata.name": str(m.get("name") or ""),
        "metadata.namespace": str(m.get("namespace") or ""),
        "metadata.uid": str(m.get("uid") or ""),
        "spec.nodeName": str(s.get("nodeName") or ""),
        "spec.serviceAccountName": str(s.get("serviceAccountName") or ""),
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    env: dict[str, str] = {}
    skipped: list[str] = []
    for item in c.get("env") or ():
        name = str(item.get("name") or "")
        if not name:
            continue
        if "valueFrom" not in item:
            env[name] = str(item.get("value") or "")
            continue
        path = str(((item["valueFrom"] or {}).get("fieldRef") or {}).get("fieldPath") or "")
        if path in fields:
            env[name] = fields[path]
        else:
            skipped.append(name)
    return env, skipped
