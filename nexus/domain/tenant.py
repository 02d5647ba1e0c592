"""NexusTenant: typed views of its spec and status, the one builder of its body, and the
names no tenant may take.

The views read an object as the API server stores it (a dict) once, defaults included, so
callers never walk ``(obj.get("spec") or {}).get(...)`` chains; the objects themselves stay
dicts, since that is what the cache holds and the API server takes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nexus.domain.resources import NODE_AVAILABLE, TENANT_ID_LABEL, TenantPhase
from nexus.runtime.objects import Object

#: ``spec.nodeProfile`` when unset (the CRD's default too).
DEFAULT_NODE_PROFILE = "full"

# A tenant's name is its namespace's name, so it must be an RFC 1123 label. `\Z`: `$` would
# also match before a trailing newline.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")

#: Names no tenant may take, besides the configured system namespace and ``kube-*``:
#: Kubernetes' default namespace and Nexus's default home.
RESERVED_NAMES = frozenset({"default", "nexus-system"})


def reserved_name_problem(name: str, system_namespace: str) -> str | None:
    """Why ``name`` cannot be a tenant (its namespace), or None.

    The tenant controller refuses to provision such a tenant and the admission webhook refuses
    to create it, with this one message.
    """
    if name in RESERVED_NAMES or name == system_namespace or name.startswith("kube-"):
        return f"tenant name {name!r} is a system namespace; choose another name"
    if not _DNS_LABEL.match(name):
        return f"tenant name {name!r} is not a valid namespace name (RFC 1123 label)"
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _quantity(value: Any) -> str | None:
    """An int-or-string quantity as a string; unset or empty is None."""
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True, slots=True)
class ResourceQuota:
    """``spec.resourceQuota``: the node's limits and how many agents the tenant may have."""

    max_agents: int | None = None
    cpu: str | None = None
    memory: str | None = None

    @classmethod
    def of(cls, raw: Any) -> ResourceQuota:
        q = _mapping(raw)
        max_agents = q.get("maxAgents")
        return cls(
            max_agents=None if max_agents is None else int(max_agents),
            cpu=_quantity(q.get("cpu")),
            memory=_quantity(q.get("memory")),
        )

    def to_object(self) -> Object:
        """The ``resourceQuota`` mapping, with only the fields that are set."""
        out: Object = {}
        if self.max_agents is not None:
            out["maxAgents"] = self.max_agents
        if self.cpu is not None:
            out["cpu"] = self.cpu
        if self.memory is not None:
            out["memory"] = self.memory
        return out

    @property
    def limits(self) -> dict[str, str]:
        """The node container's resource limits (only those set)."""
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}


@dataclass(frozen=True, slots=True)
class TenantSpec:
    display_name: str | None
    node_profile: str
    quota: ResourceQuota

    @classmethod
    def of(cls, tenant: Mapping[str, Any] | None) -> TenantSpec:
        spec = _mapping((tenant or {}).get("spec"))
        return cls(
            display_name=spec.get("displayName"),
            node_profile=str(spec.get("nodeProfile") or DEFAULT_NODE_PROFILE),
            quota=ResourceQuota.of(spec.get("resourceQuota")),
        )


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return {}


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """What the tenant controller reported; a tenant it has not seen yet is Pending.

    ``node_available`` is the ``NodeAvailable`` condition (False until reported);
    ``reason`` the reason of the Ready condition (``WaitingForNode``, ``Provisioned``, ...).
    """

    phase: str
    namespace: str | None
    node_endpoint: str | None
    agent_count: int
    node_available: bool = False
    reason: str | None = None

    @classmethod
    def of(cls, tenant: Mapping[str, Any] | None) -> TenantStatus:
        status = _mapping((tenant or {}).get("status"))
        return cls(
            phase=str(status.get("phase") or TenantPhase.PENDING),
            namespace=status.get("namespace") or None,
            node_endpoint=status.get("nodeEndpoint"),
            agent_count=int(status.get("agentCount") or 0),
            node_available=_condition(status, NODE_AVAILABLE).get("status") == "True",
            reason=_condition(status, "Ready").get("reason"),
        )

    @property
    def ready(self) -> bool:
        return self.phase == TenantPhase.READY


def tenant_body(
    name: str,
    namespace: str,
    *,
    tenant_id: str,
    display_name: str,
    node_profile: str,
    quota: ResourceQuota,
) -> Object:
    """A new NexusTenant for the tenant ``tenant_id`` of the REST API's store."""
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {TENANT_ID_LABEL: tenant_id},
        },
        "spec": {
            "displayName": display_name,
            "nodeProfile": node_profile,
            "resourceQuota": quota.to_object(),
        },
    }
