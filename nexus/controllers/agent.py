"""NexusAgentReconciler: registers and deploys each agent on its tenant's astromesh-node.

One pass: the finalizer; the node is found through the Ready NexusTenant whose
``status.namespace`` is the agent's namespace (until there is one the agent waits in Pending,
reason ``WaitingForTenant``, or ``WaitingForNode`` while the tenant waits for its node; the
tenant's transitions wake it); ``maxAgents`` is checked (for agents created with kubectl too);
phase Deploying, register and deploy on the node; phase Running with ``nodeAck`` and
``lastSyncedAt``; look again after the resync period. A node that comes back, restarts or is
replaced wakes every agent of its namespace (see ``watches``): the one GET of the pass finds
what the node lost, and the agent is registered and deployed again. ``spec.suspend`` pauses
the agent on its node (phase Stopped). A node that fails or cannot be reached sets phase
Failed and is retried after the error delay (and counted as a reconcile error); a spec the
node refused is not retried until it changes. On deletion the agent is removed from the node,
errors ignored.

Idempotent against the node: a converged agent costs one GET per resync, is never
redeployed, and writes nothing. ``lastSyncedAt`` is the time of the last change pushed to the
node: refreshing it on every resync would cost one API write per agent per minute for no new
information.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import structlog

from nexus.controllers.ports import (
    CacheReader,
    EventSink,
    NodeApi,
    SystemClock,
    WallClock,
    Writer,
)
from nexus.controllers.status import phase_status, status_unchanged
from nexus.controllers.watches import TENANT_BY_NAMESPACE
from nexus.domain.agent import AgentSpec, AgentStatus, live_agents, refuse_agent
from nexus.domain.resources import (
    AGENT_FINALIZER,
    AGENT_NAMESPACE_LABEL,
    AGENTS,
    TENANTS,
    WAITING_FOR_NODE,
    AgentPhase,
)
from nexus.domain.tenant import TenantSpec, TenantStatus
from nexus.node import NODE_NAME, NodeError
from nexus.runtime import (
    ApiError,
    Request,
    RequeueAfterError,
    Result,
    add_finalizer,
    remove_finalizer,
)
from nexus.runtime.finalizers import has_finalizer, is_being_deleted
from nexus.runtime.objects import Object, rfc3339

log = structlog.get_logger("nexus.agent")


@dataclass(frozen=True)
class AgentSettings:
    #: Nexus's own namespace, where the NexusTenant objects live.
    system_namespace: str
    #: Requeue of a converged agent (s).
    resync_period: float
    #: Retry of an agent whose node failed (s).
    error_retry: float
    #: Look again at an agent waiting for its tenant (s); the tenant's Ready transition also
    #: wakes it at once.
    pending_retry: float


class NexusAgentReconciler:
    """Converges one NexusAgent onto its tenant's node; see the module docstring."""

    def __init__(
        self,
        *,
        cache: CacheReader,
        client: Writer,
        events: EventSink,
        node: NodeApi,
        settings: AgentSettings,
        clock: WallClock | None = None,
    ) -> None:
        self.cache = cache
        self.client = client
        self.events = events
        self.node = node
        self.settings = settings
        self.clock: WallClock = clock or SystemClock()

    def tenant_for(self, namespace: str) -> Object | None:
        tenants = self.cache.by_index(
            TENANTS, TENANT_BY_NAMESPACE, namespace, self.settings.system_namespace
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
        status = AgentStatus.of(agent)
        tenant_status = TenantStatus.of(tenant)
        if tenant is None or not tenant_status.ready:
            if tenant is not None and tenant_status.reason == WAITING_FOR_NODE:
                reason = WAITING_FOR_NODE
                message = f"the {NODE_NAME} of namespace {ns} is not available yet"
            else:
                reason, message = "WaitingForTenant", f"no Ready NexusTenant owns namespace {ns}"
            await self._set_status(agent, AgentPhase.PENDING, reason, message, node_ack=False)
            return Result(requeue_after=self.settings.pending_retry)
        over = self._over_quota(agent, tenant)
        if over:
            if status.phase != AgentPhase.FAILED:
                self.events.warning(agent, "QuotaExceeded", over)
            await self._set_status(agent, AgentPhase.FAILED, "QuotaExceeded", over, node_ack=False)
            return None  # an agent deleted in the tenant re-queues us through the tenant
        if self._rejected_before(agent):
            return None  # the node refused this very spec; wait for a change
        try:
            return await self._sync(agent, ns)
        except NodeError as exc:
            await self._node_failed(agent, exc)  # raises unless the node refused the spec
            return None

    # -- node sync ----------------------------------------------------------------------------

    async def _sync(self, agent: Object, ns: str) -> Result:
        name = agent["metadata"]["name"]
        want = desired_spec(agent)
        suspend = AgentSpec.of(agent).suspend
        live = await self.node.get_agent(ns, name)
        status = AgentStatus.of(agent)
        converged = live is not None and _same_spec(want, live)
        deployed = live is not None and converged and _looks_deployed(want, live)
        if suspend:
            if not converged:
                await self.node.register(ns, want)
            if deployed:
                await self.node.pause(ns, name)
            if deployed or not converged or status.phase != AgentPhase.STOPPED:
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
            and status.phase == AgentPhase.RUNNING
            and status.observed_generation == agent["metadata"].get("generation")
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
        max_agents = TenantSpec.of(tenant).quota.max_agents
        if max_agents is None:
            return None
        live = live_agents(self.cache.list(AGENTS, agent["metadata"]["namespace"]))
        return refuse_agent(max_agents, live, agent["metadata"]["name"])

    def _rejected_before(self, agent: Object) -> bool:
        status = AgentStatus.of(agent)
        return (
            status.phase == AgentPhase.FAILED
            and status.reason() == "InvalidSpec"
            and status.observed_generation == agent["metadata"].get("generation")
        )

    async def _node_failed(self, agent: Object, exc: NodeError) -> None:
        """Phase Failed. A spec the node refused waits for a change; any other failure raises
        :class:`RequeueAfterError`: retried after ``error_retry`` and counted in
        ``controller_runtime_reconcile_errors_total``."""
        reason = "InvalidSpec" if exc.permanent else "NodeUnavailable"
        log.warning("agent.node_error", agent=agent["metadata"]["name"], error=str(exc))
        self.events.warning(agent, reason, exc.message[:1000])
        try:
            await self._set_status(agent, AgentPhase.FAILED, reason, exc.message, node_ack=False)
        except ApiError as api_exc:
            if not api_exc.not_found:
                raise
            return  # the agent is gone: nothing left to retry
        if not exc.permanent:
            raise RequeueAfterError(self.settings.error_retry, str(exc)) from exc

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
        now = rfc3339(self.clock.now())
        status = phase_status(
            agent,
            phase=str(phase),
            ready=phase == AgentPhase.RUNNING,
            reason=reason,
            message=message,
            now=now,
        )
        status["nodeAck"] = node_ack
        if synced or (node_ack and not current.get("lastSyncedAt")):
            status["lastSyncedAt"] = now
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
    """The astromesh/v1 spec sent to the node; its name is always the CR's name, and it is
    marked as Nexus's with ``AGENT_NAMESPACE_LABEL`` (the node keeps ``metadata.labels``),
    so that orphans can be told from agents deployed on the node by anything else."""
    spec: Object = copy.deepcopy(dict(AgentSpec.of(agent).agent_spec))
    meta = spec.setdefault("metadata", {})
    meta["name"] = agent["metadata"]["name"]
    labels = meta.get("labels")
    meta["labels"] = {
        **(labels if isinstance(labels, dict) else {}),
        AGENT_NAMESPACE_LABEL: agent["metadata"]["namespace"],
    }
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
        # Cannot tell from the body: an agent that declares skills counts as deployed as soon
        # as the node holds its spec.
        return True
    return "skills" in (live.get("spec") or {})
