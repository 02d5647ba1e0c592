"""NexusTenantReconciler: a namespace, an astromesh-node Deployment and Service per tenant.

One pass: the finalizer; phase Provisioning while anything is missing; the namespace
(labelled managed), the node Deployment (1 replica, port 8000, /v1/health probes, limits from
the quota, ASTROMESH_ROLE from the node profile) and its Service; the ``NodeAvailable``
condition from the Deployment's status (see ``availability``); phase Ready with the namespace
and the node's endpoint once the node is available (with ``wait_for_node``; else as soon as
the objects exist), until then Provisioning with reason ``WaitingForNode``; orphans removed
from an available node (see ``prune``), once per resync period and whenever the node comes
back; look again after the resync period. A failure sets phase Error and is retried after
the error delay (and counted as a reconcile error). On deletion the namespace goes first,
then the finalizer.

The children are watched, so drift is repaired in seconds; a converged tenant costs no API
write; conditions and events tell what happened; system namespaces are refused.
The namespace is also fenced (network policies, quota, container defaults, a token-less
ServiceAccount: see ``fence``) and the node pod runs under the restricted profile (see
``restricted``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from nexus.controllers import desired, fence
from nexus.controllers.availability import NodeAvailability, node_availability
from nexus.controllers.ports import (
    CacheReader,
    EventSink,
    NodeApi,
    SystemClock,
    WallClock,
    Writer,
)
from nexus.controllers.prune import prune_orphans
from nexus.controllers.status import phase_status, status_unchanged
from nexus.domain.agent import live_agents
from nexus.domain.resources import (
    AGENTS,
    NODE_AVAILABLE,
    TENANT_FINALIZER,
    TENANT_LABEL,
    TENANT_NAMESPACE_LABEL,
    TENANTS,
    WAITING_FOR_NODE,
    TenantPhase,
)
from nexus.domain.tenant import TenantStatus, reserved_name_problem
from nexus.node import NODE_NAME, NodeError, in_cluster_endpoint
from nexus.runtime import (
    ApiError,
    Request,
    RequeueAfterError,
    Result,
    add_finalizer,
    remove_finalizer,
)
from nexus.runtime.finalizers import has_finalizer, is_being_deleted
from nexus.runtime.objects import Object, rfc3339, set_condition
from nexus.runtime.resource import DEPLOYMENTS, NAMESPACES, PODS, SERVICES, Resource

log = structlog.get_logger("nexus.tenant")

#: How often to look again while the tenant's namespace is terminating (s). Not an error, and
#: the namespace watch usually wakes the tenant first.
NAMESPACE_DELETION_POLL = 2.0

#: A tenant's node is pruned at most once per resync period (this fraction of it, so that the
#: resync itself, which may fire a little early, always finds it due); and whenever it comes
#: back.
_PRUNE_SLACK = 0.9


@dataclass(frozen=True)
class TenantSettings:
    #: Nexus's own namespace: NexusTenant objects live there (and it is never a tenant's).
    system_namespace: str
    node_image: str
    #: Requeue of a converged tenant (s).
    resync_period: float
    #: Retry of a tenant in Error (s).
    error_retry: float
    #: Non-root UID (and GID) of the node's pods.
    node_run_as_user: int
    fence: fence.FenceSettings
    #: Ready only once the node Deployment is available; off: Ready as soon as the objects
    #: exist (a control plane without kubelets).
    wait_for_node: bool
    #: Remove orphans from tenants' nodes. Only where each tenant's calls reach its own node:
    #: never with one node URL shared by all tenants.
    prune_orphans: bool


class ReservedNameError(Exception):
    """The tenant's name is a namespace Nexus must never own."""


class NexusTenantReconciler:
    """Converges one NexusTenant; see the module docstring for the loop."""

    def __init__(
        self,
        *,
        cache: CacheReader,
        client: Writer,
        events: EventSink,
        node: NodeApi,
        settings: TenantSettings,
        clock: WallClock | None = None,
    ) -> None:
        self.cache = cache
        self.client = client
        self.events = events
        self.node = node
        self.settings = settings
        self.clock: WallClock = clock or SystemClock()
        #: Tenant uid -> when its node was last pruned (wall clock).
        self._pruned_at: dict[str, float] = {}

    # -- entry point --------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result | None:
        tenant = self.cache.get(TENANTS, request.name, request.namespace)
        if tenant is None:
            return None
        if is_being_deleted(tenant):
            return await self._finalize(tenant)
        problem = self._reserved(tenant)
        if problem:
            await self._set_status(tenant, TenantPhase.ERROR, "InvalidName", problem)
            return None  # touch nothing; a new name needs a new object anyway
        try:
            return await self._provision(tenant)
        except ApiError as exc:
            if exc.conflict:
                raise  # a stale cache after our own write: retry at once, not an error state
            raise await self._failed(tenant, f"{exc.status} {exc.reason}: {exc.message}") from exc
        except ReservedNameError as exc:
            raise await self._failed(tenant, str(exc)) from exc
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise await self._failed(tenant, f"{type(exc).__name__}: {exc}") from exc

    # -- provisioning -------------------------------------------------------------------------

    def _reserved(self, tenant: Object) -> str | None:
        return reserved_name_problem(tenant["metadata"]["name"], self.settings.system_namespace)

    async def _provision(self, tenant: Object) -> Result:
        meta = tenant["metadata"]
        name = meta["name"]
        if not has_finalizer(tenant, TENANT_FINALIZER):
            tenant = await add_finalizer(self.client, TENANTS, tenant, TENANT_FINALIZER)
        live_ns = self.cache.get(NAMESPACES, name)
        if live_ns is not None and is_being_deleted(live_ns):
            await self._set_status(
                tenant,
                TenantPhase.PROVISIONING,
                "NamespaceTerminating",
                f"waiting for the old namespace {name} to finish terminating",
            )
            return Result(requeue_after=NAMESPACE_DELETION_POLL)
        node = desired.node_deployment(
            tenant, self.settings.node_image, run_as_user=self.settings.node_run_as_user
        )
        # Each stage needs the one before (the namespace; the fence before the node, whose
        # pods must never run unfenced); the objects of a stage are written concurrently.
        stages: list[list[tuple[Resource, Object]]] = [
            [(NAMESPACES, desired.namespace(tenant))],
            fence.children(tenant, self.settings.fence),
            [(DEPLOYMENTS, node), (SERVICES, desired.node_service(tenant))],
        ]
        changes = [self._changes(stage) for stage in stages]
        before = TenantStatus.of(tenant)
        phase = before.phase
        if any(changes) and phase != TenantPhase.READY:
            tenant = await self._set_status(
                tenant,
                TenantPhase.PROVISIONING,
                "Provisioning",
                "creating the tenant namespace and its astromesh-node",
            )
            self.events.normal(tenant, "Provisioning", f"provisioning namespace {name}")
        for stage_changes in changes:
            await self._apply_stage(stage_changes, tenant)
        availability = node_availability(
            self.cache.get(DEPLOYMENTS, NODE_NAME, name), self.cache.list(PODS, name)
        )
        self._report_node(tenant, before, availability)
        if self.settings.wait_for_node and not availability.available:
            await self._set_status(
                tenant,
                TenantPhase.PROVISIONING,
                WAITING_FOR_NODE,
                f"the {NODE_NAME} is not available yet: {availability.message}",
                namespace=name,
                node=availability,
            )
            # The Deployment and pod watches wake the tenant when that changes.
            return Result(requeue_after=self.settings.resync_period)
        tenant = await self._set_status(
            tenant,
            TenantPhase.READY,
            "Provisioned",
            "namespace and astromesh-node are in place"
            + ("" if availability.available else " (the node is not available yet)"),
            namespace=name,
            node_endpoint=in_cluster_endpoint(name),
            node=availability,
        )
        if phase != TenantPhase.READY:
            self.events.normal(tenant, "Ready", f"tenant namespace {name} is ready")
        if availability.available:
            await self._prune(tenant, came_back=not before.node_available)
        return Result(requeue_after=self.settings.resync_period)

    def _report_node(self, tenant: Object, before: TenantStatus, node: NodeAvailability) -> None:
        """An event when the node comes or goes (not when it is first seen starting)."""
        name = tenant["metadata"]["name"]
        if before.node_available and not node.available:
            log.warning("tenant.node_unavailable", tenant=name, reason=node.reason)
            self.events.warning(tenant, "NodeUnavailable", node.message)
        elif node.available and not before.node_available:
            log.info("tenant.node_available", tenant=name)
            self.events.normal(tenant, "NodeAvailable", f"the {NODE_NAME} answers")

    # -- orphans ------------------------------------------------------------------------------

    async def _prune(self, tenant: Object, *, came_back: bool) -> None:
        if not self.settings.prune_orphans:
            return
        meta = tenant["metadata"]
        key = meta.get("uid") or meta["name"]
        now = self.clock.now()
        last = self._pruned_at.get(key)
        due = last is None or now - last >= _PRUNE_SLACK * self.settings.resync_period
        if not (due or came_back):
            return
        self._pruned_at[key] = now
        ns = meta["name"]
        try:
            removed = await prune_orphans(self.node, self.cache, ns)
        except NodeError as exc:
            # Not the tenant's failure: its objects are in place. The next pass tries again.
            log.info("tenant.prune_failed", tenant=ns, error=str(exc))
            return
        for agent in removed:
            log.info("tenant.orphan_removed", tenant=ns, agent=agent)
            self.events.normal(
                tenant,
                "OrphanRemoved",
                f"agent {agent} ran on the node without a NexusAgent; removed it",
            )

    def _changes(
        self, stage: list[tuple[Resource, Object]]
    ) -> list[tuple[Resource, Object, Object | None]]:
        """The objects of ``stage`` that are missing or differ, each with its live version."""
        out = []
        for res, want in stage:
            meta = want["metadata"]
            live = self.cache.get(res, meta["name"], meta.get("namespace"))
            if live is None or not desired.is_subset(_owned(want), live):
                out.append((res, want, live))
        return out

    async def _apply_stage(
        self, changes: list[tuple[Resource, Object, Object | None]], tenant: Object
    ) -> None:
        results = await asyncio.gather(
            *(self._apply(res, want, live, tenant) for res, want, live in changes),
            return_exceptions=True,
        )
        for (res, want, live), result in zip(changes, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            if live is not None:
                name = tenant["metadata"]["name"]
                log.info("tenant.drift_repaired", tenant=name, kind=res.kind)
                self.events.normal(
                    tenant, "Repaired", f"{res.kind} {want['metadata']['name']} restored"
                )

    def _ours(self, ns: Object, tenant: Object) -> bool:
        labels = ns["metadata"].get("labels") or {}
        return bool(
            labels.get(TENANT_LABEL) == tenant["metadata"]["name"]
            and labels.get(TENANT_NAMESPACE_LABEL) == tenant["metadata"]["namespace"]
        )

    async def _apply(
        self, res: Resource, want: Object, live: Object | None, tenant: Object
    ) -> None:
        meta = want["metadata"]
        if live is None:
            # Optimistic create: the label-scoped cache cannot see a namespace that exists
            # without our labels, so a conflict is where ownership gets checked.
            try:
                await self.client.create(res, want)
                return
            except ApiError as exc:
                if not exc.already_exists:
                    raise
            if res is NAMESPACES:
                existing = await self.client.get_or_none(NAMESPACES, meta["name"])
                if existing is not None and not self._ours(existing, tenant):
                    raise ReservedNameError(
                        f"namespace {meta['name']!r} already exists and is not managed by "
                        "this tenant"
                    ) from None
        # A merge patch of the fields we own: lists are replaced, maps merged, and fields the
        # server defaulted are kept.
        body = desired.merge_patch(_owned(want), live)
        await self.client.patch(res, meta["name"], body, meta.get("namespace"))

    # -- status -------------------------------------------------------------------------------

    def _agent_count(self, namespace: str | None) -> int:
        if not namespace:
            return 0
        return len(live_agents(self.cache.list(AGENTS, namespace)))

    async def _set_status(
        self,
        tenant: Object,
        phase: TenantPhase,
        reason: str,
        message: str,
        *,
        namespace: str | None = None,
        node_endpoint: str | None = None,
        node: NodeAvailability | None = None,
    ) -> Object:
        """``node``: the ``NodeAvailable`` condition to set (else it is kept as it was)."""
        current = tenant.get("status") or {}
        now = rfc3339(self.clock.now())
        status = phase_status(
            tenant,
            phase=str(phase),
            ready=phase == TenantPhase.READY,
            reason=reason,
            message=message,
            now=now,
        )
        if node is not None:
            status["conditions"] = set_condition(
                status["conditions"],
                NODE_AVAILABLE,
                node.status,
                reason=node.reason,
                message=node.message,
                observed_generation=tenant["metadata"].get("generation"),
                now=now,
            )
        if namespace is not None:
            status["namespace"] = namespace
            status["nodeEndpoint"] = node_endpoint
        status["agentCount"] = self._agent_count(namespace or current.get("namespace"))
        if status_unchanged(current, status):
            return tenant
        meta = tenant["metadata"]
        return await self.client.patch_status(TENANTS, meta["name"], status, meta["namespace"])

    async def _failed(self, tenant: Object, message: str) -> RequeueAfterError:
        """Sets phase Error; the caller raises the returned error, so that the tenant is
        retried after ``error_retry`` and counted in ``controller_runtime_reconcile_errors_total``.
        """
        log.warning("tenant.error", tenant=tenant["metadata"]["name"], error=message)
        self.events.warning(tenant, "ProvisioningFailed", message)
        try:
            await self._set_status(tenant, TenantPhase.ERROR, "ProvisioningFailed", message)
        except (ApiError, ConnectionError, OSError) as exc:
            log.warning("tenant.status_write_failed", error=str(exc))
        return RequeueAfterError(self.settings.error_retry, message)

    # -- deletion -----------------------------------------------------------------------------

    async def _finalize(self, tenant: Object) -> Result | None:
        self._pruned_at.pop(tenant["metadata"].get("uid") or tenant["metadata"]["name"], None)
        if not has_finalizer(tenant, TENANT_FINALIZER):
            return None
        name = tenant["metadata"]["name"]
        ns = await self.client.get_or_none(NAMESPACES, name)
        if ns is not None and self._ours(ns, tenant):
            if not is_being_deleted(ns):
                await self.client.delete(NAMESPACES, name, ignore_not_found=True)
                self.events.normal(tenant, "Deleting", f"deleting namespace {name}")
            # Keep the tenant until its namespace (and the agents' cleanup in it) is gone; the
            # namespace watch wakes us when it disappears.
            return Result(requeue_after=NAMESPACE_DELETION_POLL)
        # Read it afresh: a pass queued while the previous one removed the finalizer sees a
        # cache that has not caught up yet, and must not remove (and report) it twice.
        fresh = await self.client.get_or_none(TENANTS, name, tenant["metadata"]["namespace"])
        if fresh is None or not has_finalizer(fresh, TENANT_FINALIZER):
            return None
        await remove_finalizer(self.client, TENANTS, fresh, TENANT_FINALIZER)
        log.info("tenant.deleted", tenant=name)
        return None


def _owned(want: Object) -> Object:
    """The part of a desired object that a patch or comparison covers (no name/namespace)."""
    out = {k: v for k, v in want.items() if k != "metadata"}
    out["metadata"] = {"labels": want["metadata"].get("labels") or {}}
    return out
