"""NexusTenantReconciler, branch by branch, on in-memory fakes (no control plane)."""

from __future__ import annotations

import pytest

from nexus.controllers.tenant import NAMESPACE_DELETION_POLL
from nexus.domain.resources import (
    AGENTS,
    MANAGED_LABEL,
    TENANT_FINALIZER,
    TENANT_LABEL,
    TENANT_NAMESPACE_LABEL,
    TENANTS,
)
from nexus.node import NODE_NAME
from nexus.runtime import Request, RequeueAfterError, Result
from nexus.runtime.client import ApiError
from nexus.runtime.resource import DEPLOYMENTS, NAMESPACES, SERVICES

from ..support.fakes import SYSTEM_NS, World, agent, tenant


def status(world: World, name: str) -> dict:
    return world.tenant(name).get("status") or {}


def ready_condition(world: World, name: str) -> dict:
    return next(c for c in status(world, name)["conditions"] if c["type"] == "Ready")


async def provisioned(world: World, name: str = "acme", **kw: object) -> None:
    world.server.put(TENANTS, tenant(name, **kw))  # type: ignore[arg-type]
    await world.reconcile_tenant(name)
    world.forget_calls()


@pytest.fixture
def world() -> World:
    return World()


# -- provisioning -------------------------------------------------------------------------------


async def test_a_tenant_that_is_gone_is_left_alone(world: World) -> None:
    assert await world.reconcile_tenant("ghost") is None
    assert world.server.calls == [] and world.events.events == []


async def test_a_new_tenant_gets_its_namespace_node_and_service(world: World) -> None:
    world.server.put(TENANTS, tenant("acme"))
    result = await world.reconcile_tenant("acme")
    assert result == Result(requeue_after=World.RESYNC)
    ns = world.server.peek(NAMESPACES, "acme")
    assert ns is not None
    assert ns["metadata"]["labels"][MANAGED_LABEL] == "true"
    assert ns["metadata"]["labels"][TENANT_LABEL] == "acme"
    assert ns["metadata"]["labels"][TENANT_NAMESPACE_LABEL] == SYSTEM_NS
    deploy = world.server.peek(DEPLOYMENTS, NODE_NAME, "acme")
    assert deploy is not None
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "astromesh/node:test"
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}
    assert world.server.peek(SERVICES, NODE_NAME, "acme") is not None
    st = status(world, "acme")
    assert st["phase"] == "Ready"
    assert st["namespace"] == "acme"
    assert st["nodeEndpoint"] == "http://astromesh-node.acme.svc:8000"
    assert st["agentCount"] == 0
    assert TENANT_FINALIZER in world.tenant("acme")["metadata"]["finalizers"]
    assert world.events.reasons == ["Provisioning", "Ready"]


async def test_provisioning_is_reported_before_the_children_are_created(world: World) -> None:
    world.server.put(TENANTS, tenant("acme"))
    await world.reconcile_tenant("acme")
    order = [
        (c.verb, c.kind, (c.body or {}).get("phase"))
        for c in world.server.writes()
        if c.verb in ("create", "patch_status")
    ]
    # Status first, then the namespace, then its fence, and only then the node, whose pod
    # must never run unfenced; the Ready status comes last.
    assert order[0] == ("patch_status", "NexusTenant", "Provisioning")
    assert order[1] == ("create", "Namespace", None)
    assert order[-1] == ("patch_status", "NexusTenant", "Ready")
    kinds = [kind for _, kind, _ in order[2:-1]]
    fence = {"NetworkPolicy", "ResourceQuota", "LimitRange", "ServiceAccount"}
    assert set(kinds[:-2]) == fence
    assert sorted(kinds[-2:]) == ["Deployment", "Service"]


async def test_ready_is_stamped_with_the_clock(world: World) -> None:
    world.server.put(TENANTS, tenant("acme"))
    await world.reconcile_tenant("acme")
    cond = ready_condition(world, "acme")
    assert cond["status"] == "True" and cond["reason"] == "Provisioned"
    assert cond["lastTransitionTime"] == "2026-01-01T00:00:00Z"


async def test_a_converged_tenant_writes_nothing(world: World) -> None:
    await provisioned(world)
    world.clock.advance(3600)
    assert await world.reconcile_tenant("acme") == Result(requeue_after=World.RESYNC)
    assert world.server.writes() == []
    assert world.events.events == []


async def test_status_unchanged_means_no_status_write_even_when_time_moved(world: World) -> None:
    await provisioned(world)
    before = world.tenant("acme")["metadata"]["resourceVersion"]
    world.clock.advance(86400)
    await world.reconcile_tenant("acme")
    assert world.tenant("acme")["metadata"]["resourceVersion"] == before


async def test_agent_count_follows_live_agents(world: World) -> None:
    await provisioned(world)
    world.server.put(AGENTS, agent("a1", "acme"))
    world.server.put(AGENTS, agent("a2", "acme"))
    gone = agent("a3", "acme")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    gone["metadata"]["finalizers"] = ["nexus.astromesh.io/agent-cleanup"]
    world.server.put(AGENTS, gone)
    await world.reconcile_tenant("acme")
    assert status(world, "acme")["agentCount"] == 2
    assert [c.verb for c in world.server.writes()] == ["patch_status"]


# -- names Nexus must never own -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "kube-system", "kube-public", SYSTEM_NS])
async def test_reserved_names_are_refused_and_nothing_is_touched(world: World, name: str) -> None:
    world.server.put(TENANTS, tenant(name))
    assert await world.reconcile_tenant(name) is None
    st = status(world, name)
    assert st["phase"] == "Error"
    assert "system namespace" in st["message"]
    assert ready_condition(world, name)["reason"] == "InvalidName"
    assert [c.verb for c in world.server.writes()] == ["patch_status"]
    assert "finalizers" not in world.tenant(name)["metadata"]


async def test_a_name_that_is_not_a_namespace_name_is_refused(world: World) -> None:
    world.server.put(TENANTS, tenant("team.a"))
    assert await world.reconcile_tenant("team.a") is None
    assert status(world, "team.a")["phase"] == "Error"
    assert "RFC 1123" in status(world, "team.a")["message"]
    assert world.server.peek(NAMESPACES, "team.a") is None


async def test_a_foreign_namespace_is_not_taken_over(world: World) -> None:
    # It exists without Nexus's labels, so the label-scoped cache does not see it either.
    world.server.put(NAMESPACES, {"metadata": {"name": "acme", "labels": {"team": "other"}}})
    world.server.put(TENANTS, tenant("acme"))
    with pytest.raises(RequeueAfterError) as err:
        await world.reconcile_tenant("acme")
    assert err.value.requeue_after == World.ERROR_RETRY
    assert "not managed by this tenant" in err.value.reason
    st = status(world, "acme")
    assert st["phase"] == "Error" and "already exists" in st["message"]
    assert world.server.peek(NAMESPACES, "acme")["metadata"]["labels"] == {"team": "other"}
    assert world.server.peek(DEPLOYMENTS, NODE_NAME, "acme") is None
    assert "ProvisioningFailed" in world.events.reasons


async def test_our_namespace_not_yet_in_the_cache_is_adopted(world: World) -> None:
    await provisioned(world)
    world.cache.sync()
    del world.cache.objects[("namespaces", None, "acme")]  # the watch has not delivered it
    result = await world.tenants.reconcile(Request(name="acme", namespace=SYSTEM_NS))
    assert result == Result(requeue_after=World.RESYNC)
    assert [(c.verb, c.kind) for c in world.server.calls if c.verb != "get"] == [
        ("create", "Namespace"),  # 409 AlreadyExists
        ("patch", "Namespace"),  # ours (by its labels): brought to the desired state
    ]
    assert status(world, "acme")["phase"] == "Ready"


# -- drift ---------------------------------------------------------------------------------------


async def test_a_scaled_deployment_is_restored(world: World) -> None:
    await provisioned(world)
    key = ("deployments", "acme", NODE_NAME)
    world.server.objects[key]["spec"]["replicas"] = 3
    assert await world.reconcile_tenant("acme") == Result(requeue_after=World.RESYNC)
    assert world.server.peek(DEPLOYMENTS, NODE_NAME, "acme")["spec"]["replicas"] == 1
    assert [(c.verb, c.kind) for c in world.server.writes()] == [("patch", "Deployment")]
    assert world.events.reasons == ["Repaired"]


async def test_a_deleted_service_is_recreated_without_leaving_ready(world: World) -> None:
    await provisioned(world)
    del world.server.objects[("services", "acme", NODE_NAME)]
    await world.reconcile_tenant("acme")
    assert world.server.peek(SERVICES, NODE_NAME, "acme") is not None
    assert [(c.verb, c.kind) for c in world.server.writes()] == [("create", "Service")]
    assert status(world, "acme")["phase"] == "Ready"


async def test_server_defaulted_fields_are_not_drift(world: World) -> None:
    await provisioned(world)
    svc = world.server.objects[("services", "acme", NODE_NAME)]
    svc["spec"]["clusterIP"] = "10.0.0.7"
    svc["spec"]["sessionAffinity"] = "None"
    deploy = world.server.objects[("deployments", "acme", NODE_NAME)]
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    deploy["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2000m"
    await world.reconcile_tenant("acme")
    assert world.server.writes() == []


async def test_a_quota_change_reaches_the_node_limits(world: World) -> None:
    await provisioned(world)
    world.server.objects[("nexustenants", SYSTEM_NS, "acme")]["spec"]["resourceQuota"]["cpu"] = "3"
    await world.reconcile_tenant("acme")
    deploy = world.server.peek(DEPLOYMENTS, NODE_NAME, "acme")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "3"


# -- failures ------------------------------------------------------------------------------------


async def test_an_api_error_sets_error_and_raises_requeue_after(world: World) -> None:
    world.server.put(TENANTS, tenant("acme"))
    world.server.fail("create", DEPLOYMENTS, ApiError(500, "InternalError", {"message": "boom"}))
    with pytest.raises(RequeueAfterError) as err:
        await world.reconcile_tenant("acme")
    assert err.value.requeue_after == World.ERROR_RETRY
    assert "boom" in err.value.reason
    st = status(world, "acme")
    assert st["phase"] == "Error" and "500" in st["message"]
    assert ready_condition(world, "acme")["reason"] == "ProvisioningFailed"
    assert world.events.events[-1].type == "Warning"


async def test_a_connection_error_raises_requeue_after(world: World) -> None:
    world.server.put(TENANTS, tenant("acme"))
    world.server.fail("create", NAMESPACES, ConnectionResetError("reset by peer"))
    with pytest.raises(RequeueAfterError, match="ConnectionResetError"):
        await world.reconcile_tenant("acme")
    assert status(world, "acme")["phase"] == "Error"


async def test_a_failed_status_write_still_raises_requeue_after(world: World) -> None:
    world.server.put(TENANTS, tenant("acme"))
    world.server.fail("create", SERVICES, ApiError(503, "ServiceUnavailable"))
    # Provisioning is written; the Error write after the failure is not.
    real = world.server.patch_status
    calls = 0

    async def flaky(*args: object, **kw: object) -> dict:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionRefusedError("API server gone")
        return await real(*args, **kw)  # type: ignore[arg-type]

    world.server.patch_status = flaky  # type: ignore[method-assign]
    with pytest.raises(RequeueAfterError):
        await world.reconcile_tenant("acme")
    assert calls == 2


async def test_a_conflict_is_retried_at_once_not_reported(world: World) -> None:
    await provisioned(world)
    world.server.objects[("deployments", "acme", NODE_NAME)]["spec"]["replicas"] = 0
    world.server.fail("patch", DEPLOYMENTS, ApiError(409, "Conflict"))
    with pytest.raises(ApiError) as err:
        await world.reconcile_tenant("acme")
    assert err.value.conflict and not isinstance(err.value, RequeueAfterError)
    assert status(world, "acme")["phase"] == "Ready"


async def test_an_error_clears_on_the_next_successful_pass(world: World) -> None:
    world.server.put(TENANTS, tenant("acme"))
    world.server.fail("create", NAMESPACES, ApiError(500, "InternalError"))
    with pytest.raises(RequeueAfterError):
        await world.reconcile_tenant("acme")
    world.clock.advance(30)
    assert await world.reconcile_tenant("acme") == Result(requeue_after=World.RESYNC)
    assert status(world, "acme")["phase"] == "Ready"
    cond = ready_condition(world, "acme")
    assert cond["status"] == "True" and cond["lastTransitionTime"] == "2026-01-01T00:00:30Z"
    assert world.events.reasons[-1] == "Ready"


async def test_an_old_namespace_still_terminating_is_waited_for(world: World) -> None:
    world.server.put(
        NAMESPACES,
        {
            "metadata": {
                "name": "acme",
                "labels": {TENANT_LABEL: "acme", TENANT_NAMESPACE_LABEL: SYSTEM_NS},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
            }
        },
    )
    world.server.put(TENANTS, tenant("acme"))
    assert await world.reconcile_tenant("acme") == Result(requeue_after=NAMESPACE_DELETION_POLL)
    assert status(world, "acme")["phase"] == "Provisioning"
    assert ready_condition(world, "acme")["reason"] == "NamespaceTerminating"
    assert world.server.peek(DEPLOYMENTS, NODE_NAME, "acme") is None


# -- deletion ------------------------------------------------------------------------------------


def delete_tenant(world: World, name: str = "acme") -> None:
    world.server.objects[("nexustenants", SYSTEM_NS, name)]["metadata"]["deletionTimestamp"] = (
        "2026-01-01T01:00:00Z"
    )


async def test_deletion_deletes_the_namespace_and_waits_for_it(world: World) -> None:
    await provisioned(world)
    delete_tenant(world)
    assert await world.reconcile_tenant("acme") == Result(requeue_after=NAMESPACE_DELETION_POLL)
    assert [(c.verb, c.kind) for c in world.server.writes()] == [("delete", "Namespace")]
    assert world.events.reasons == ["Deleting"]
    assert TENANT_FINALIZER in world.tenant("acme")["metadata"]["finalizers"]


async def test_deletion_does_not_delete_a_terminating_namespace_twice(world: World) -> None:
    await provisioned(world)
    delete_tenant(world)
    await world.reconcile_tenant("acme")
    world.forget_calls()
    assert await world.reconcile_tenant("acme") == Result(requeue_after=NAMESPACE_DELETION_POLL)
    assert world.server.writes() == []
    assert world.server.peek(TENANTS, "acme", SYSTEM_NS) is not None


async def test_deletion_ends_once_the_namespace_is_gone(world: World) -> None:
    await provisioned(world)
    delete_tenant(world)
    await world.reconcile_tenant("acme")
    world.server.finish_namespace_deletion("acme")
    assert await world.reconcile_tenant("acme") is None
    assert world.server.peek(TENANTS, "acme", SYSTEM_NS) is None  # finalizer removed


async def test_a_pass_on_a_stale_cache_does_not_finish_the_deletion_twice(world: World) -> None:
    await provisioned(world)
    t = world.server.objects[("nexustenants", SYSTEM_NS, "acme")]
    t["metadata"]["finalizers"].append("someone.else/cleanup")  # keeps the tenant around
    delete_tenant(world)
    await world.reconcile_tenant("acme")
    world.server.finish_namespace_deletion("acme")
    await world.reconcile_tenant("acme")
    assert world.tenant("acme")["metadata"]["finalizers"] == ["someone.else/cleanup"]
    world.forget_calls()
    # The cache still shows the finalizer Nexus has just removed.
    assert await world.tenants.reconcile(Request(name="acme", namespace=SYSTEM_NS)) is None
    assert world.server.writes() == []


async def test_deletion_leaves_a_foreign_namespace_alone(world: World) -> None:
    world.server.put(NAMESPACES, {"metadata": {"name": "acme", "labels": {"team": "other"}}})
    t = tenant("acme")
    t["metadata"]["finalizers"] = [TENANT_FINALIZER]
    t["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    world.server.put(TENANTS, t)
    assert await world.reconcile_tenant("acme") is None
    assert world.server.peek(NAMESPACES, "acme") is not None
    assert not any(c.verb == "delete" for c in world.server.calls)
    assert world.server.peek(TENANTS, "acme", SYSTEM_NS) is None


async def test_deletion_without_our_finalizer_does_nothing(world: World) -> None:
    t = tenant("acme")
    t["metadata"]["finalizers"] = ["someone.else/cleanup"]
    t["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    world.server.put(TENANTS, t)
    assert await world.reconcile_tenant("acme") is None
    assert world.server.calls == []
