"""NexusTenantReconciler: a namespace, an astromesh-node Deployment and Service per tenant.

The seed's loop: finalizer; phase Provisioning; namespace (labelled managed); node Deployment
(1 replica, port 8000, /v1/health probes, limits from the quota, ASTROMESH_ROLE); Service;
phase Ready with namespace and node endpoint; requeue 60 s; errors -> Error, requeue 30 s;
on deletion the namespace goes first, then the finalizer. Beyond it: children are watched
(drift is repaired in seconds), a converged tenant costs no API write, conditions and events
tell what happened, and system namespaces are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import structlog

from nexus.controllers import desired
from nexus.controllers.status import phase_status, status_unchanged
from nexus.resources import (
    AGENTS,
    NODE_NAME,
    TENANT_FINALIZER,
    TENANT_LABEL,
    TENANT_NAMESPACE_LABEL,
    TENANTS,
    TenantPhase,
    in_cluster_endpoint,
)
from nexus.runtime import ApiError, Manager, Request, Result, add_finalizer, remove_finalizer
from nexus.runtime.finalizers import has_finalizer, is_being_deleted
from nexus.runtime.resource import DEPLOYMENTS, NAMESPACES, SERVICES, Resource

log = structlog.get_logger("nexus.tenant")

Object = dict[str, Any]
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class TenantSettings:
    #: Namespace where NexusTenant objects live.
    namespace: str = "nexus-system"
    node_image: str = "ghcr.io/monaccode/astromesh:latest"
    resync_period: float = 60.0
    error_retry: float = 30.0
    #: How often to look again while the tenant namespace is being deleted.
    deletion_poll: float = 2.0


def reserved_name_problem(name: str, tenant_namespace: str) -> str | None:
    """Why ``name`` cannot be a tenant (its namespace), or None; shared with the webhook."""
    if name in ("default", tenant_namespace, "nexus-system") or name.startswith("kube-"):
        return f"tenant name {name!r} is a system namespace; choose another name"
    if not _DNS_LABEL.match(name):
        return f"tenant name {name!r} is not a valid namespace name (RFC 1123 label)"
    return None


class ReservedNameError(Exception):
    """The tenant's name is a namespace Nexus must never own."""


class NexusTenantReconciler:
    """Converges one NexusTenant; see the module docstring for the loop."""

    def __init__(self, mgr: Manager, settings: TenantSettings) -> None:
        self.mgr = mgr
        self.client = mgr.client
        self.cache = mgr.cache
        self.settings = settings
        self.events = mgr.event_recorder("nexustenant-controller")

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
            return await self._failed(tenant, f"{exc.status} {exc.reason}: {exc.message}")
        except ReservedNameError as exc:
            return await self._failed(tenant, str(exc))
        except (ConnectionError, OSError, TimeoutError) as exc:
            return await self._failed(tenant, f"{type(exc).__name__}: {exc}")

    # -- provisioning -------------------------------------------------------------------------

    def _reserved(self, tenant: Object) -> str | None:
        return reserved_name_problem(tenant["metadata"]["name"], self.settings.namespace)

    async def _provision(self, tenant: Object) -> Result:
        meta = tenant["metadata"]
        name = meta["name"]
        if not has_finalizer(tenant, TENANT_FINALIZER):
            tenant = await add_finalizer(self.client, TENANTS, tenant, TENANT_FINALIZER)
        want_ns = desired.namespace(tenant)
        want_deploy = desired.node_deployment(tenant, self.settings.node_image)
        want_svc = desired.node_service(tenant)
        live_ns = self.cache.get(NAMESPACES, name)
        if live_ns is not None and is_being_deleted(live_ns):
            await self._set_status(
                tenant,
                TenantPhase.PROVISIONING,
                "NamespaceTerminating",
                f"waiting for the old namespace {name} to finish terminating",
            )
            return Result(requeue_after=self.settings.deletion_poll)
        live_deploy = self.cache.get(DEPLOYMENTS, NODE_NAME, name)
        live_svc = self.cache.get(SERVICES, NODE_NAME, name)
        changes = [
            (res, want, live)
            for res, want, live in (
                (NAMESPACES, want_ns, live_ns),
                (DEPLOYMENTS, want_deploy, live_deploy),
                (SERVICES, want_svc, live_svc),
            )
            if live is None or not desired.is_subset(_owned(want), live)
        ]
        phase = (tenant.get("status") or {}).get("phase")
        if changes and phase != TenantPhase.READY:
            tenant = await self._set_status(
                tenant,
                TenantPhase.PROVISIONING,
                "Provisioning",
                "creating the tenant namespace and its astromesh-node",
            )
            self.events.normal(tenant, "Provisioning", f"provisioning namespace {name}")
        for res, want, live in changes:
            await self._apply(res, want, live, tenant)
            if live is not None:
                log.info("tenant.drift_repaired", tenant=name, kind=res.kind)
                self.events.normal(
                    tenant, "Repaired", f"{res.kind} {want['metadata']['name']} restored"
                )
        await self._set_status(
            tenant,
            TenantPhase.READY,
            "Provisioned",
            "namespace and astromesh-node are in place",
            namespace=name,
            node_endpoint=in_cluster_endpoint(name),
        )
        if phase != TenantPhase.READY:
            self.events.normal(tenant, "Ready", f"tenant namespace {name} is ready")
        return Result(requeue_after=self.settings.resync_period)

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
        await self.client.patch(res, meta["name"], _owned(want), meta.get("namespace"))

    # -- status -------------------------------------------------------------------------------

    def _agent_count(self, namespace: str | None) -> int:
        if not namespace:
            return 0
        return sum(1 for a in self.cache.list(AGENTS, namespace) if not is_being_deleted(a))

    async def _set_status(
        self,
        tenant: Object,
        phase: TenantPhase,
        reason: str,
        message: str,
        *,
        namespace: str | None = None,
        node_endpoint: str | None = None,
    ) -> Object:
        current = tenant.get("status") or {}
        status = phase_status(
            tenant,
            phase=str(phase),
            ready=phase == TenantPhase.READY,
            reason=reason,
            message=message,
        )
        if namespace is not None:
            status["namespace"] = namespace
            status["nodeEndpoint"] = node_endpoint
        status["agentCount"] = self._agent_count(namespace or current.get("namespace"))
        if status_unchanged(current, status):
            return tenant
        meta = tenant["metadata"]
        return await self.client.patch_status(TENANTS, meta["name"], status, meta["namespace"])

    async def _failed(self, tenant: Object, message: str) -> Result:
        log.warning("tenant.error", tenant=tenant["metadata"]["name"], error=message)
        self.events.warning(tenant, "ProvisioningFailed", message)
        try:
            await self._set_status(tenant, TenantPhase.ERROR, "ProvisioningFailed", message)
        except (ApiError, ConnectionError, OSError) as exc:
            log.warning("tenant.status_write_failed", error=str(exc))
        return Result(requeue_after=self.settings.error_retry)

    # -- deletion -----------------------------------------------------------------------------

    async def _finalize(self, tenant: Object) -> Result | None:
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
            return Result(requeue_after=self.settings.deletion_poll)
        await remove_finalizer(self.client, TENANTS, tenant, TENANT_FINALIZER)
        log.info("tenant.deleted", tenant=name)
        return None


def _owned(want: Object) -> Object:
    """The part of a desired object that a patch or comparison covers (no name/namespace)."""
    out = {k: v for k, v in want.items() if k != "metadata"}
    out["metadata"] = {"labels": want["metadata"].get("labels") or {}}
    return out
