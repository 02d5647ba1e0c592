"""NexusAgentReconciler: registers and deploys each agent on its tenant's astromesh-node.

The seed's loop: finalizer; phase Deploying; resolve the node through the Ready NexusTenant
whose ``status.namespace`` is the agent's namespace; register, deploy; phase Running with
``nodeAck`` and ``lastSyncedAt``; requeue 60 s; errors -> Failed, requeue 30 s; on deletion
``DELETE`` on the node, errors ignored. Beyond it: idempotent against the node (a converged
agent costs one GET per resync and is never redeployed, and writes nothing), agents wait in
Pending for their tenant and are woken when it is Ready, ``maxAgents`` holds for agents created
with kubectl too, and ``spec.suspend`` pauses an agent on its node (phase Stopped).

``lastSyncedAt`` is the time of the last change pushed to the node: refreshing it on every
resync would cost one API write per agent per minute for no new information.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import structlog

from nexus.controllers.node_client import NodeClient, NodeError
from nexus.controllers.status import phase_status, status_unchanged
from nexus.resources import AGENT_FINALIZER, AGENTS, TENANTS, AgentPhase, TenantPhase
from nexus.runtime import ApiError, Manager, Request, Result, add_finalizer, remove_finalizer
from nexus.runtime.finalizers import has_finalizer, is_being_deleted
from nexus.runtime.objects import now_rfc3339

log = structlog.get_logger("nexus.agent")

Object = dict[str, Any]

#: Index on the tenant informer: tenant namespace -> tenant key.
TENANT_BY_NAMESPACE = "status.namespace"


def tenant_namespace_index(tenant: Object) -> list[str]:
    ns = (tenant.get("status") or {}).get("namespace")
    return [ns] if ns else []


@dataclass(frozen=True)
class AgentSettings:
    #: Namespace where NexusTenant objects live.
    tenant_namespace: str = "nexus-system"
    resync_period: float = 60.0
    error_retry: float = 30.0
    #: While waiting for the tenant; its Ready transition also wakes the agent at once.
    pending_retry: float = 30.0


class NexusAgentReconciler:
    """Converges one NexusAgent onto its tenant's node; see the module docstring."""

    def __init__(self, mgr: Manager, node: NodeClient, settings: AgentSettings) -> None:
        self.mgr = mgr
        self.client = mgr.client
        self.cache = mgr.cache
        self.node = node
        self.settings = settings
        self.events = mgr.event_recorder("nexusagent-controller")

    def tenant_for(self, namespace: str) -> Object | None:
        tenants = self.cache.by_index(
            TENANTS, TENANT_BY_NAMESPACE, namespace, self.settings.tenant_namespace
        )
        return tenants[0] if tenants else None

    async def reconcile(self, request: Request) -> Result | None:
        agent = self.cache.get(AGENTS, request.name, request.namespace)
        if agent is None:
            return None
        ns = agent["metadata"]["namespace"]
        tenant = self.tenant_for(ns)
        if is_being_deleted(agent):
            return await self._finalize(agent, tenant)
        if not has_finalizer(agent, AGENT_FINALIZER):
            agent = await add_finalizer(self.client, AGENTS, agent, AGENT_FINALIZER)
        status = agent.get("status") or {}
        if tenant is None or (tenant.get("status") or {}).get("phase") != TenantPhase.READY:
            await self._set_status(
                agent,
                AgentPhase.PENDING,
                "WaitingForTenant",
                f"no Ready NexusTenant owns namespace {ns}",
                node_ack=False,
            )
            return Result(requeue_after=self.settings.pending_retry)
        over = self._over_quota(agent, tenant)
        if over:
            if status.get("phase") != AgentPhase.FAILED:
                self.events.warning(agent, "QuotaExceeded", over)
            await self._set_status(agent, AgentPhase.FAILED, "QuotaExceeded", over, node_ack=False)
            return None  # an agent deleted in the tenant re-queues us through the tenant
        if self._rejected_before(agent):
            return None  # the node refused this very spec; wait for a change
        try:
            return await self._sync(agent, ns)
        except NodeError as exc:
            return await self._node_failed(agent, exc)

    # -- node sync ----------------------------------------------------------------------------

    async def _sync(self, agent: Object, ns: str) -> Result:
        name = agent["metadata"]["name"]
        want = desired_spec(agent)
        suspend = bool((agent.get("spec") or {}).get("suspend"))
        live = await self.node.get_agent(ns, name)
        status = agent.get("status") or {}
        converged = live is not None and _same_spec(want, live)
        deployed = live is not None and converged and _looks_deployed(want, live)
        if suspend:
            if not converged:
                await self.node.register(ns, want)
            if deployed:
                await self.node.pause(ns, name)
            if deployed or not converged or status.get("phase") != AgentPhase.STOPPED:
                self.events.normal(agent, "Stopped", "agent paused on its node")
            await self._set_status(
                agent,
                AgentPhase.STOPPED,
                "Suspended",
                "spec.suspend is true",
                node_ack=False,
                synced=not converged or deployed,
            )
            return Result(requeue_after=self.settings.resync_period)
        if (
            converged
            and deployed
            and status.get("phase") == AgentPhase.RUNNING
            and status.get("observedGeneration") == agent["metadata"].get("generation")
        ):
            # The common resync: one GET, no write anywhere.
            return Result(requeue_after=self.settings.resync_period)
        if not (converged and deployed):
            agent = await self._set_status(
                agent,
                AgentPhase.DEPLOYING,
                "Deploying",
                "registering and deploying on the node",
                node_ack=False,
            )
            if not converged:
                await self.node.register(ns, want)
            await self.node.deploy(ns, name)
            self.events.normal(agent, "Deployed", "agent registered and deployed on the node")
        await self._set_status(
            agent,
            AgentPhase.RUNNING,
            "Deployed",
            "agent is deployed on its node",
            node_ack=True,
            synced=not (converged and deployed),
        )
        return Result(requeue_after=self.settings.resync_period)

    def _over_quota(self, agent: Object, tenant: Object) -> str | None:
        quota = ((tenant.get("spec") or {}).get("resourceQuota") or {}).get("maxAgents")
        if quota is None:
            return None
        ns = agent["metadata"]["namespace"]
        alive = [a for a in self.cache.list(AGENTS, ns) if not is_being_deleted(a)]
        # First come, first served: the oldest agents keep their places.
        alive.sort(
            key=lambda a: (a["metadata"].get("creationTimestamp", ""), a["metadata"]["name"])
        )
        names = [a["metadata"]["name"] for a in alive]
        name = agent["metadata"]["name"]
        if name in names and names.index(name) >= int(quota):
            return f"exceeded quota: maxAgents={quota}"
        return None

    def _rejected_before(self, agent: Object) -> bool:
        status = agent.get("status") or {}
        cond: Object = next(
            (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
        )
        return (
            status.get("phase") == AgentPhase.FAILED
            and cond.get("reason") == "InvalidSpec"
            and status.get("observedGeneration") == agent["metadata"].get("generation")
        )

    async def _node_failed(self, agent: Object, exc: NodeError) -> Result | None:
        reason = "InvalidSpec" if exc.permanent else "NodeUnavailable"
        log.warning("agent.node_error", agent=agent["metadata"]["name"], error=str(exc))
        self.events.warning(agent, reason, exc.message[:1000])
        try:
            await self._set_status(agent, AgentPhase.FAILED, reason, exc.message, node_ack=False)
        except ApiError as api_exc:
            if not api_exc.not_found:
                raise
        return None if exc.permanent else Result(requeue_after=self.settings.error_retry)

    # -- status -------------------------------------------------------------------------------

    async def _set_status(
        self,
        agent: Object,
        phase: AgentPhase,
        reason: str,
        message: str,
        *,
        node_ack: bool,
        synced: bool = False,
    ) -> Object:
        current = agent.get("status") or {}
        status = phase_status(
            agent,
            phase=str(phase),
            ready=phase == AgentPhase.RUNNING,
            reason=reason,
            message=message,
        )
        status["nodeAck"] = node_ack
        if synced or (node_ack and not current.get("lastSyncedAt")):
            status["lastSyncedAt"] = now_rfc3339()
        if status_unchanged(current, status):
            return agent
        meta = agent["metadata"]
        return await self.client.patch_status(AGENTS, meta["name"], status, meta["namespace"])

    # -- deletion -----------------------------------------------------------------------------

    async def _finalize(self, agent: Object, tenant: Object | None) -> Result | None:
        if not has_finalizer(agent, AGENT_FINALIZER):
            return None
        meta = agent["metadata"]
        if tenant is not None:
            try:
                await self.node.delete(meta["namespace"], meta["name"])
            except NodeError as exc:
                # The node may be gone with its namespace: never hold the deletion hostage.
                log.info("agent.node_delete_ignored", agent=meta["name"], error=str(exc))
        await remove_finalizer(self.client, AGENTS, agent, AGENT_FINALIZER)
        return None


def desired_spec(agent: Object) -> Object:
    """The astromesh/v1 spec sent to the node; its name is always the CR's name."""
    spec = copy.deepcopy((agent.get("spec") or {}).get("agentSpec") or {})
    meta = spec.setdefault("metadata", {})
    meta["name"] = agent["metadata"]["name"]
    return spec


def _without_skills(spec: Object) -> Object:
    out = dict(spec)
    inner = dict(out.get("spec") or {})
    inner.pop("skills", None)
    out["spec"] = inner
    return out


def _same_spec(want: Object, live: Object) -> bool:
    # The node injects the validated ``spec.skills`` into deployed agents.
    if "skills" in (want.get("spec") or {}):
        return bool(want == live) or _without_skills(want) == _without_skills(live)
    return _without_skills(want) == _without_skills(live)


def _looks_deployed(want: Object, live: Object) -> bool:
    """The node injects ``spec.skills`` only into built (deployed) agents."""
    if "skills" in (want.get("spec") or {}):
        return True  # cannot tell from the body; the list call settles it in _sync callers
    return "skills" in (live.get("spec") or {})
