"""NexusTenant admission: defaults as the REST API sets them, reserved names, quota sanity,
and an immutable ``nodeProfile``.

Why ``nodeProfile`` is immutable: the profile becomes the node Deployment's
``ASTROMESH_ROLE``, so a change rolls the tenant's node; the node keeps agents in memory only,
so every agent of the tenant is gone until the agent controller re-registers it on its next
resync; and the REST API records the profile when it creates a tenant and reports that
record. A tenant with another profile is a new tenant: delete and re-create it.
"""

from __future__ import annotations

from typing import Any

from nexus.domain.tenant import DEFAULT_NODE_PROFILE, ResourceQuota
from nexus.runtime.finalizers import is_being_deleted
from nexus.runtime.quantity import parse_quantity
from nexus.runtime.webhook import AdmissionRequest, Defaulter, Denied, Validator, Warnings
from nexus.webhooks.lookup import Lookup
from nexus.webhooks.rules import reserved_name_problem

Object = dict[str, Any]

_QUANTITY_EXAMPLES = {"cpu": '"4" or "500m"', "memory": '"8Gi" or "512Mi"'}


def quota_problems(spec: Object) -> list[str]:
    quota = spec.get("resourceQuota")
    if quota is None:
        return []
    if not isinstance(quota, dict):
        return ["spec.resourceQuota must be a mapping"]
    problems = []
    if "maxAgents" in quota:
        value = quota["maxAgents"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append("spec.resourceQuota.maxAgents must be an integer of at least 0")
    for key in ("cpu", "memory"):
        if quota.get(key) is None:
            continue
        path = f"spec.resourceQuota.{key}"
        value = quota[key]
        try:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(value)
            amount = parse_quantity(value)
        except ValueError:
            problems.append(f"{path} must be a quantity such as {_QUANTITY_EXAMPLES[key]}")
            continue
        if amount <= 0:
            problems.append(f"{path} must be greater than zero")
    return problems


def _profile(obj: Object) -> object:
    return (obj.get("spec") or {}).get("nodeProfile") or DEFAULT_NODE_PROFILE


class NexusTenantValidator(Validator):
    """Validates NexusTenant creates and spec-changing updates; see the module docstring."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    async def validate_create(self, request: AdmissionRequest, obj: Object) -> Warnings:
        meta = obj.get("metadata") or {}
        problems = []
        ns = meta.get("namespace") or request.namespace
        if ns != self.lookup.tenant_namespace:
            problems.append(
                f"NexusTenants live in namespace {self.lookup.tenant_namespace!r}: one in "
                f"{ns!r} would never be provisioned"
            )
        if meta.get("name"):
            reserved = reserved_name_problem(meta["name"], self.lookup.tenant_namespace)
            if reserved:
                problems.append(reserved)
        problems += quota_problems(obj.get("spec") or {})
        if problems:
            raise Denied(problems)
        return ()

    async def validate_update(
        self, request: AdmissionRequest, old: Object, new: Object
    ) -> Warnings:
        if is_being_deleted(new) or old.get("spec") == new.get("spec"):
            return ()
        problems = quota_problems(new.get("spec") or {})
        if _profile(old) != _profile(new):
            problems.append(
                f"spec.nodeProfile is immutable (it is {_profile(old)!r}): a new profile means a "
                "new node; delete and re-create the tenant to change it"
            )
        if problems:
            raise Denied(problems)
        return await self._quota_warnings(new)

    async def _quota_warnings(self, tenant: Object) -> list[str]:
        quota = ((tenant.get("spec") or {}).get("resourceQuota") or {}).get("maxAgents")
        if not isinstance(quota, int) or isinstance(quota, bool):
            return []
        alive = len(await self.lookup.live_agents(tenant["metadata"]["name"]))
        if alive <= quota:
            return []
        return [
            f"maxAgents={quota} is below the tenant's {alive} agents: the newest "
            f"{alive - quota} will be marked Failed (QuotaExceeded)"
        ]


class NexusTenantDefaulter(Defaulter):
    """On create, fills what the REST API always sets, so kubectl-made tenants match;
    ``quota`` is the ``resourceQuota`` the API gives its tenants (the --default-* flags)."""

    def __init__(self, quota: ResourceQuota) -> None:
        self.quota = quota

    async def default(self, request: AdmissionRequest, obj: Object) -> Warnings:
        if request.operation != "CREATE":
            return ()
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return ()  # the schema refuses it; nothing sensible to default
        name = (obj.get("metadata") or {}).get("name")
        if not spec.get("displayName") and name:
            spec["displayName"] = name
        if not spec.get("nodeProfile"):
            spec["nodeProfile"] = DEFAULT_NODE_PROFILE
        quota = spec.setdefault("resourceQuota", {})
        if isinstance(quota, dict):
            for key, value in self.quota.to_object().items():
                if quota.get(key) is None:
                    quota[key] = value
        return ()
