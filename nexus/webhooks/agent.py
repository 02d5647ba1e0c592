"""NexusAgent admission: the REST API's answers for agents made with kubectl.

On create: every violation of the agent-spec rules (the API's own validation, same
messages), ``spec.agentSpec.metadata.name`` equal to the NexusAgent's name, a NexusTenant
owning the namespace (a warning while it is not Ready: the agent waits in Pending), and the
tenant's ``maxAgents`` — all reported together. On update: the spec rules again, but only
when the spec changed, so metadata-only writes (finalizers, labels) and deletions of agents
stored before a rule existed always go through. The reconciler's own quota check stays, for
agents created concurrently.
"""

from __future__ import annotations

from typing import Any

from nexus.domain.tenant import TenantSpec, TenantStatus
from nexus.runtime.finalizers import is_being_deleted
from nexus.runtime.webhook import AdmissionRequest, Denied, Validator, Warnings
from nexus.webhooks.lookup import Lookup
from nexus.webhooks.rules import agent_name, refuse_new_agent, validate_agent

Object = dict[str, Any]


def spec_problems(obj: Object) -> list[str]:
    """Agent-spec violations of a NexusAgent, in the API's words, plus the name rule."""
    spec = obj.get("spec")
    agent_spec = spec.get("agentSpec") if isinstance(spec, dict) else None
    if not isinstance(agent_spec, dict):
        return ["spec.agentSpec is required: an astromesh/v1 Agent spec"]
    problems = validate_agent(agent_spec)
    name = (obj.get("metadata") or {}).get("name")
    inner = agent_name(agent_spec)
    if name and inner is not None and inner != name:
        problems.append(f"metadata.name must be {name!r} (the name of the NexusAgent)")
    return problems


class NexusAgentValidator(Validator):
    """Validates NexusAgent creates and spec-changing updates; see the module docstring."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    async def validate_create(self, request: AdmissionRequest, obj: Object) -> Warnings:
        problems = spec_problems(obj)
        policy, warnings = await self._tenant_rules(obj, request.namespace)
        if problems or policy:
            # A spec error makes the object invalid (422); tenant and quota refusals alone are
            # policy (403), as the API answers them.
            raise Denied(
                [*problems, *policy],
                code=422 if problems else 403,
                reason="Invalid" if problems else "Forbidden",
                field="spec.agentSpec" if problems and not policy else "",
                warnings=warnings,
            )
        return warnings

    async def validate_update(
        self, request: AdmissionRequest, old: Object, new: Object
    ) -> Warnings:
        if is_being_deleted(new) or old.get("spec") == new.get("spec"):
            return ()
        problems = spec_problems(new)
        if problems:
            raise Denied(problems, field="spec.agentSpec")
        return ()

    async def _tenant_rules(self, obj: Object, namespace: str) -> tuple[list[str], list[str]]:
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        tenant = await self.lookup.tenant(ns)
        if tenant is None:
            return [
                f"namespace {ns!r} does not belong to a tenant: create NexusTenant {ns!r} in "
                f"namespace {self.lookup.tenant_namespace!r} first"
            ], []
        if is_being_deleted(tenant):
            return [f"tenant {ns!r} is being deleted"], []
        warnings = []
        status = TenantStatus.of(tenant)
        if not status.ready:
            warnings.append(
                f"tenant {ns!r} is not Ready yet (phase {status.phase}); the agent waits in Pending"
            )
        quota = TenantSpec.of(tenant).quota
        over = refuse_new_agent(quota.max_agents, await self.lookup.live_agents(ns))
        return ([over] if over else []), warnings
