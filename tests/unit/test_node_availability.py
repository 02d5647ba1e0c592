"""Ready means the node answers: NodeAvailable, WaitingForNode, waking agents, the ``pod``
node endpoint and orphan pruning, branch by branch on the fakes (no control plane)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus import app
from nexus.controllers.availability import STARTING, node_availability
from nexus.controllers.prune import marked_for, prune_orphans
from nexus.controllers.watches import (
    agents_of_namespace,
    node_pod_restarted,
    node_pod_status_changed,
    tenant_matters_to_agents,
)
from nexus.domain.resources import AGENT_NAMESPACE_LABEL, AGENTS, TENANTS
from nexus.domain.tenant import TenantStatus
from nexus.node import (
    NODE_NAME,
    NODE_POD_SELECTOR,
    NodeEndpoints,
    NodeError,
    per_tenant_endpoint,
)
from nexus.runtime import Request, Result
from nexus.runtime.resource import PODS
from nexus.settings import ManagerSettings

from ..support.fakes import SYSTEM_NS, FakeCache, World, agent, node_pod, tenant

NS = "acme"

Object = dict[str, Any]


def tenant_status(world: World) -> Object:
    return world.tenant(NS).get("status") or {}


def condition(world: World, type_: str) -> Object:
    return next(c for c in tenant_status(world)["conditions"] if c["type"] == type_)


def agent_status(world: World, name: str = "bot") -> Object:
    return world.agent(name, NS).get("status") or {}


def agent_reason(world: World, name: str = "bot") -> str:
    conds = agent_status(world, name)["conditions"]
    return str(next(c["reason"] for c in conds if c["type"] == "Ready"))


@pytest.fixture
def world() -> World:
    return World(wait_for_node=True)


async def waiting_tenant(world: World) -> None:
    world.server.put(TENANTS, tenant(NS))
    await world.reconcile_tenant(NS)


async def ready_tenant(world: World) -> None:
    await waiting_tenant(world)
    world.node_available(NS)
    await world.reconcile_tenant(NS)
    assert tenant_status(world)["phase"] == "Ready"


def nexus_spec(name: str, namespace: str = NS) -> Object:
    """An agent spec as Nexus sends it to the node of ``namespace``."""
    spec = agent(name, namespace)["spec"]["agentSpec"]
    spec["metadata"]["labels"] = {AGENT_NAMESPACE_LABEL: namespace}
    return dict(spec)


# -- the availability of a node, from its Deployment and pods -----------------------------------


def deployment(**status: Any) -> Object:
    return {"metadata": {"name": NODE_NAME, "namespace": NS}, "status": status}


def test_an_available_deployment_means_an_available_node() -> None:
    got = node_availability(
        deployment(availableReplicas=1, conditions=[{"type": "Available", "status": "True"}]),
        [node_pod(NS, ready=True)],
    )
    assert got.available and got.status == "True"


def test_every_state_on_the_way_up_has_one_message() -> None:
    states = [
        node_availability(None, []),
        node_availability(deployment(), []),
        node_availability(deployment(replicas=1, unavailableReplicas=1), [node_pod(NS, ip=None)]),
        node_availability(deployment(replicas=1), [node_pod(NS, ready=False)]),
        # Ready, but the controller manager has not counted it yet.
        node_availability(deployment(replicas=1), [node_pod(NS, ready=True)]),
    ]
    assert {(s.available, s.reason, s.message) for s in states} == {
        (False, "NodeStarting", STARTING)
    }


def test_an_available_count_with_available_false_is_not_available() -> None:
    got = node_availability(
        deployment(availableReplicas=1, conditions=[{"type": "Available", "status": "False"}]),
        [],
    )
    assert not got.available


def test_an_unschedulable_pod_is_the_reason() -> None:
    pod = node_pod(
        NS,
        ip=None,
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "node nexus-local is at its cap of 1 pods",
            }
        ],
    )
    got = node_availability(deployment(replicas=1, unavailableReplicas=1), [pod])
    assert not got.available and got.reason == "Unschedulable"
    assert "cap of 1 pods" in got.message and pod["metadata"]["name"] in got.message


def test_a_container_that_cannot_start_is_the_reason() -> None:
    pod = node_pod(NS, restarts=3)
    pod["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}
    }
    got = node_availability(deployment(replicas=1), [pod])
    assert got.reason == "ContainerWaiting"
    assert "CrashLoopBackOff: back-off 40s" in got.message and "restarted 3 times" in got.message


def test_creating_is_not_a_problem() -> None:
    pod = node_pod(NS, ip=None)
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    assert node_availability(deployment(), [pod]).reason == "NodeStarting"


def test_a_pod_the_quota_refuses_is_the_reason() -> None:
    dep = deployment(
        conditions=[
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "astromesh-node-x" is forbidden: exceeded quota',
            }
        ]
    )
    got = node_availability(dep, [])
    assert got.reason == "PodCreationFailed" and "exceeded quota" in got.message


def test_a_deployment_past_its_deadline_says_so() -> None:
    dep = deployment(
        conditions=[{"type": "Progressing", "status": "False", "message": "timed out"}]
    )
    got = node_availability(dep, [node_pod(NS)])
    assert got.reason == "ProgressDeadlineExceeded" and "timed out" in got.message


def test_a_terminating_pod_is_not_the_reason() -> None:
    old = node_pod(NS, name="old", phase="Failed", message="evicted")
    old["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert node_availability(deployment(), [old]).reason == "NodeStarting"
    old["metadata"].pop("deletionTimestamp")
    got = node_availability(deployment(), [old])
    assert got.reason == "PodFailed" and "evicted" in got.message


def test_other_pods_of_the_namespace_do_not_count() -> None:
    stranger = node_pod(NS, phase="Failed", message="boom")
    stranger["metadata"]["labels"] = {"app": "other"}
    assert node_availability(deployment(), [stranger]).reason == "NodeStarting"


# -- the tenant: NodeAvailable, WaitingForNode ---------------------------------------------------


async def test_a_tenant_waits_for_its_node_before_it_is_ready(world: World) -> None:
    await waiting_tenant(world)
    st = tenant_status(world)
    assert st["phase"] == "Provisioning"
    assert st["namespace"] == NS  # its agents find it, and say what they wait for
    assert "nodeEndpoint" not in st
    ready = condition(world, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "WaitingForNode"
    assert STARTING in ready["message"]
    node = condition(world, "NodeAvailable")
    assert node["status"] == "False" and node["reason"] == "NodeStarting"
    assert "Ready" not in world.events.reasons


async def test_waiting_for_the_node_writes_nothing_more(world: World) -> None:
    await waiting_tenant(world)
    world.forget_calls()
    world.clock.advance(30)
    assert await world.reconcile_tenant(NS) == Result(requeue_after=World.RESYNC)
    assert world.server.writes() == [] and world.events.events == []


async def test_the_tenant_is_ready_once_its_node_is_available(world: World) -> None:
    await waiting_tenant(world)
    world.forget_calls()
    world.node_available(NS)
    await world.reconcile_tenant(NS)
    st = tenant_status(world)
    assert st["phase"] == "Ready"
    assert st["nodeEndpoint"] == f"http://{NODE_NAME}.{NS}.svc:8000"
    assert condition(world, "Ready")["status"] == "True"
    node = condition(world, "NodeAvailable")
    assert node["status"] == "True" and node["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert world.events.reasons == ["NodeAvailable", "Ready"]
    assert TenantStatus.of(world.tenant(NS)).node_available


async def test_why_the_node_does_not_start_is_in_the_status(world: World) -> None:
    await waiting_tenant(world)
    pod = node_pod(
        NS,
        ip=None,
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu.",
            }
        ],
    )
    world.node_available(NS, available=False, pod=pod)
    await world.reconcile_tenant(NS)
    st = tenant_status(world)
    assert st["phase"] == "Provisioning"
    assert "Insufficient cpu" in st["message"]
    node = condition(world, "NodeAvailable")
    assert node["reason"] == "Unschedulable" and "Insufficient cpu" in node["message"]


async def test_a_node_that_goes_away_takes_the_tenant_out_of_ready(world: World) -> None:
    await ready_tenant(world)
    world.forget_calls()
    world.clock.advance(5)
    world.node_available(NS, available=False, pod=node_pod(NS, ready=False, restarts=1))
    await world.reconcile_tenant(NS)
    st = tenant_status(world)
    assert st["phase"] == "Provisioning" and "nodeEndpoint" not in st
    assert condition(world, "Ready")["reason"] == "WaitingForNode"
    node = condition(world, "NodeAvailable")
    assert node["status"] == "False" and node["lastTransitionTime"] == "2026-01-01T00:00:05Z"
    assert world.events.reasons == ["NodeUnavailable"]
    # ... and back.
    world.node_available(NS, pod=node_pod(NS, ready=True, restarts=1))
    await world.reconcile_tenant(NS)
    assert tenant_status(world)["phase"] == "Ready"
    assert world.events.reasons == ["NodeUnavailable", "NodeAvailable", "Ready"]


async def test_without_waiting_the_tenant_is_ready_and_says_the_node_is_not() -> None:
    world = World(wait_for_node=False)
    await waiting_tenant(world)
    st = tenant_status(world)
    assert st["phase"] == "Ready" and st["nodeEndpoint"]
    assert condition(world, "NodeAvailable")["status"] == "False"
    assert "not available yet" in st["message"]
    world.node_available(NS)
    await world.reconcile_tenant(NS)
    assert condition(world, "NodeAvailable")["status"] == "True"
    assert tenant_status(world)["message"] == "namespace and astromesh-node are in place"


# -- agents wait for the node, and are woken by it ------------------------------------------------


async def test_agents_of_a_tenant_waiting_for_its_node_wait_in_pending(world: World) -> None:
    await waiting_tenant(world)
    world.server.put(AGENTS, agent("bot", NS))
    assert await world.reconcile_agent("bot", NS) == Result(requeue_after=World.PENDING_RETRY)
    st = agent_status(world)
    assert st["phase"] == "Pending" and st["nodeAck"] is False
    assert agent_reason(world) == "WaitingForNode"
    assert "not available" in st["message"]
    assert world.node.calls == []  # no deploy attempt, no Failed


async def test_an_agent_waiting_for_its_node_runs_once_it_is_available(world: World) -> None:
    await waiting_tenant(world)
    world.server.put(AGENTS, agent("bot", NS))
    await world.reconcile_agent("bot", NS)
    old_tenant = world.tenant(NS)
    world.node_available(NS)
    await world.reconcile_tenant(NS)
    # The tenant's update is one that wakes its agents.
    assert tenant_matters_to_agents(old_tenant, world.tenant(NS))
    await world.reconcile_agent("bot", NS)
    assert agent_status(world)["phase"] == "Running"
    assert world.node.state(NS, "bot") == "deployed"


async def test_without_a_namespace_the_agent_still_waits_for_its_tenant(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    await world.reconcile_agent("bot", NS)
    assert agent_reason(world) == "WaitingForTenant"


async def test_a_restarted_node_gets_its_agents_back(world: World) -> None:
    await ready_tenant(world)
    world.server.put(AGENTS, agent("bot", NS))
    await world.reconcile_agent("bot", NS)
    assert agent_status(world)["phase"] == "Running"

    # The node's process dies: the tenant and its agent wait ...
    world.node.restart(NS)
    world.node_available(NS, available=False, pod=node_pod(NS, restarts=1))
    await world.reconcile_tenant(NS)
    await world.reconcile_agent("bot", NS)
    assert agent_status(world)["phase"] == "Pending"
    assert agent_reason(world) == "WaitingForNode"
    assert world.node.state(NS, "bot") is None

    # ... it is back, without the agent: the agent's pass puts it there again.
    world.node_available(NS, pod=node_pod(NS, ready=True, restarts=1))
    await world.reconcile_tenant(NS)
    world.forget_calls()
    await world.reconcile_agent("bot", NS)
    assert [c[0] for c in world.node.calls] == ["get_agent", "register", "deploy"]
    assert agent_status(world)["phase"] == "Running"
    assert world.node.state(NS, "bot") == "deployed"


async def test_a_node_restart_the_tenant_never_saw_is_repaired_on_the_wake(world: World) -> None:
    """The node restarted in place faster than its Deployment noticed: the pod watch wakes
    the agent, whose one GET finds the agent gone."""
    await ready_tenant(world)
    world.server.put(AGENTS, agent("bot", NS))
    await world.reconcile_agent("bot", NS)
    world.node.restart(NS)
    world.forget_calls()
    await world.reconcile_agent("bot", NS)
    assert [c[0] for c in world.node.calls] == ["get_agent", "register", "deploy"]
    assert agent_status(world)["phase"] == "Running"


# -- what wakes whom --------------------------------------------------------------------------


def test_a_node_pod_restart_or_readiness_change_wakes_the_agents() -> None:
    ready = node_pod(NS, ready=True, uid="u1")
    assert node_pod_restarted(ready, node_pod(NS, ready=False, uid="u1"))
    assert node_pod_restarted(ready, node_pod(NS, ready=True, uid="u1", restarts=1))
    assert node_pod_restarted(ready, node_pod(NS, ready=True, uid="u1", ip="127.0.100.8"))
    going = node_pod(NS, ready=True, uid="u1")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert node_pod_restarted(ready, going)
    same = node_pod(NS, ready=True, uid="u1")
    same["metadata"]["resourceVersion"] = "99"
    same["status"]["conditions"].append({"type": "Initialized", "status": "True"})
    assert not node_pod_restarted(ready, same)


def test_a_scheduling_message_wakes_the_tenant_not_the_agents() -> None:
    old = node_pod(NS, ip=None, uid="u1")
    new = node_pod(
        NS,
        ip=None,
        uid="u1",
        conditions=[{"type": "PodScheduled", "status": "False", "message": "no room"}],
    )
    assert node_pod_status_changed(old, new)
    assert not node_pod_restarted(old, new)
    assert not node_pod_status_changed(old, node_pod(NS, ip=None, uid="u1"))


def test_a_node_pod_maps_to_every_agent_of_its_namespace() -> None:
    world = World()
    for name in ("a1", "a2"):
        world.server.put(AGENTS, agent(name, NS))
    world.server.put(AGENTS, agent("other", "elsewhere"))
    world.cache.sync()
    requests = list(agents_of_namespace(world.cache)(node_pod(NS)))
    assert requests == [Request(name="a1", namespace=NS), Request(name="a2", namespace=NS)]


def test_a_change_of_node_availability_wakes_the_agents() -> None:
    old = tenant(NS)
    old["status"] = {"phase": "Ready", "namespace": NS, "conditions": []}
    new = {**old, "status": {**old["status"], "conditions": [
        {"type": "NodeAvailable", "status": "True", "reason": "x", "message": ""}
    ]}}  # fmt: skip
    assert tenant_matters_to_agents(old, new)


# -- the pod node endpoint ------------------------------------------------------------------------


def pod_cache(*pods: Object) -> FakeCache:
    world = World()
    for pod in pods:
        world.server.put(PODS, pod)
    world.cache.sync()
    return world.cache


def test_the_pod_endpoint_is_the_ready_pods_address() -> None:
    cache = pod_cache(node_pod(NS, ready=True, ip="127.0.100.9"))
    assert NodeEndpoints("pod", pods=cache).base_url(NS) == "http://127.0.100.9:8000"


def test_the_pod_endpoint_without_a_ready_pod_fails_like_an_unreachable_node() -> None:
    cache = pod_cache(node_pod(NS, ready=False))
    with pytest.raises(NodeError) as err:
        NodeEndpoints("pod", pods=cache).base_url(NS)
    assert err.value.unreachable and NS in err.value.message
    with pytest.raises(NodeError):
        NodeEndpoints("pod", pods=cache).base_url("no-such-namespace")


def test_the_pod_endpoint_skips_a_terminating_pod_and_prefers_the_newest() -> None:
    old = node_pod(NS, name="old", ready=True, ip="127.0.100.1")
    old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    new = node_pod(NS, name="new", ready=True, ip="127.0.100.2")
    new["metadata"]["creationTimestamp"] = "2026-01-01T00:01:00Z"
    endpoints = NodeEndpoints("pod", pods=pod_cache(old, new))
    assert endpoints.base_url(NS) == "http://127.0.100.2:8000"
    new["metadata"]["deletionTimestamp"] = "2026-01-01T00:02:00Z"
    endpoints = NodeEndpoints("pod", pods=pod_cache(old, new))
    assert endpoints.base_url(NS) == "http://127.0.100.1:8000"


def test_the_pod_endpoint_brackets_ipv6() -> None:
    cache = pod_cache(node_pod(NS, ready=True, ip="fd00::7"))
    assert NodeEndpoints("pod", pods=cache).base_url(NS) == "http://[fd00::7]:8000"


def test_the_pod_endpoint_needs_the_pod_cache() -> None:
    with pytest.raises(ValueError, match="pod cache"):
        NodeEndpoints("pod")


def test_which_endpoints_reach_each_tenants_own_node() -> None:
    for setting in ("dns", "proxy", "pod", "", "http://127.0.0.1:9/{namespace}"):
        assert per_tenant_endpoint(setting)
    assert not per_tenant_endpoint("http://127.0.0.1:18000")
    assert app.controller_settings(ManagerSettings(node_endpoint="pod")).tenant.prune_orphans
    shared = app.controller_settings(ManagerSettings(node_endpoint="http://127.0.0.1:9"))
    assert not shared.tenant.prune_orphans


def test_waiting_for_the_node_is_the_default_and_can_be_turned_off() -> None:
    assert app.controller_settings(ManagerSettings()).tenant.wait_for_node
    assert not app.controller_settings(ManagerSettings(wait_for_node=False)).tenant.wait_for_node


# -- orphans ------------------------------------------------------------------------------------


def test_only_specs_nexus_sent_for_this_namespace_are_marked() -> None:
    assert marked_for(nexus_spec("bot"), NS)
    assert not marked_for(nexus_spec("bot", "other"), NS)
    assert not marked_for(agent("bot", NS)["spec"]["agentSpec"], NS)
    assert not marked_for({"metadata": {"labels": "x"}}, NS)
    assert not marked_for(None, NS)


async def put_node_agents(world: World) -> None:
    """On the node: a NexusAgent's agent, an orphan, someone else's agent, and an agent
    marked for another namespace."""
    world.server.put(AGENTS, agent("kept", NS))
    world.node.put(NS, nexus_spec("kept"))
    world.node.put(NS, nexus_spec("orphan"))
    world.node.put(NS, dict(agent("foreign", NS)["spec"]["agentSpec"]))
    world.node.put(NS, nexus_spec("elsewhere", "other-ns"))


async def test_prune_removes_only_marked_agents_without_a_nexusagent() -> None:
    world = World()
    await put_node_agents(world)
    world.cache.sync()
    assert await prune_orphans(world.node, world.cache, NS) == ["orphan"]
    assert sorted(world.node.agents[NS]) == ["elsewhere", "foreign", "kept"]
    # One list, one GET per agent without a NexusAgent, one delete.
    assert [c[0] for c in world.node.calls] == [
        "list_agents", "get_agent", "delete", "get_agent", "get_agent",
    ]  # fmt: skip


async def test_prune_spares_an_agent_whose_nexusagent_appeared_meanwhile() -> None:
    world = World()
    world.node.put(NS, nexus_spec("late"))
    world.cache.sync()

    real_get = world.node.get_agent

    async def get_then_create(namespace: str, name: str) -> Object | None:
        world.server.put(AGENTS, agent(name, NS))
        world.cache.sync()
        return await real_get(namespace, name)

    world.node.get_agent = get_then_create  # type: ignore[method-assign]
    assert await prune_orphans(world.node, world.cache, NS) == []
    assert "late" in world.node.agents[NS]


async def test_the_tenant_prunes_its_available_node(world: World) -> None:
    await ready_tenant(world)  # the node came: pruned at once (nothing there yet)
    await put_node_agents(world)
    world.forget_calls()
    world.clock.advance(World.RESYNC)
    await world.reconcile_tenant(NS)
    assert sorted(world.node.agents[NS]) == ["elsewhere", "foreign", "kept"]
    assert world.events.reasons == ["OrphanRemoved"]
    assert "orphan" in world.events.events[0].note


async def test_pruning_happens_once_per_resync_period(world: World) -> None:
    await ready_tenant(world)
    world.forget_calls()
    world.clock.advance(5)
    await world.reconcile_tenant(NS)
    assert world.node.calls_of("list_agents") == []
    world.clock.advance(World.RESYNC)
    await world.reconcile_tenant(NS)
    assert len(world.node.calls_of("list_agents")) == 1


async def test_a_node_that_comes_back_is_pruned_at_once(world: World) -> None:
    await ready_tenant(world)
    world.node_available(NS, available=False)
    await world.reconcile_tenant(NS)
    # Deleted while the node was down (its finalizer let go), back from the node's disk.
    world.node.put(NS, nexus_spec("deleted-while-down"))
    world.forget_calls()
    world.clock.advance(5)
    world.node_available(NS)
    await world.reconcile_tenant(NS)
    assert "deleted-while-down" not in world.node.agents[NS]
    assert "OrphanRemoved" in world.events.reasons


async def test_a_node_that_is_not_available_is_not_pruned() -> None:
    world = World(wait_for_node=False)
    await waiting_tenant(world)
    world.node.put(NS, nexus_spec("orphan"))
    world.clock.advance(World.RESYNC)
    await world.reconcile_tenant(NS)
    assert world.node.calls_of("list_agents") == []
    assert "orphan" in world.node.agents[NS]


async def test_a_shared_node_is_never_pruned() -> None:
    world = World(wait_for_node=True, prune_orphans=False)
    await ready_tenant(world)
    world.node.put(NS, nexus_spec("orphan"))
    world.clock.advance(World.RESYNC)
    await world.reconcile_tenant(NS)
    assert world.node.calls_of("list_agents") == []


async def test_a_node_failing_the_prune_does_not_fail_the_tenant(world: World) -> None:
    await waiting_tenant(world)
    world.node.down = NodeError(0, "connection refused")
    world.node_available(NS)
    assert await world.reconcile_tenant(NS) == Result(requeue_after=World.RESYNC)
    assert tenant_status(world)["phase"] == "Ready"
    assert world.node.calls_of("list_agents")


async def test_a_deleted_tenant_forgets_when_it_was_pruned(world: World) -> None:
    await ready_tenant(world)
    assert world.tenants._pruned_at
    obj = world.server.objects[("nexustenants", SYSTEM_NS, NS)]
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    await world.reconcile_tenant(NS)
    assert world.tenants._pruned_at == {}


async def test_one_node_pod_informer_serves_the_endpoint_and_both_controllers() -> None:
    cfg = k8s_client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # never called: nothing here starts the manager
    async with k8s_client.ApiClient(cfg) as api:
        nexus = app.Nexus(api, ManagerSettings(api_bind_address="0", node_endpoint="pod"))
        try:
            pods = [i for i in nexus.manager.cache.informers if i.resource == PODS]
            assert [(i.namespace, i.label_selector) for i in pods] == [(None, NODE_POD_SELECTOR)]
            assert nexus.node.endpoints.pods is nexus.manager.cache
            with pytest.raises(NodeError, match="no Ready"):
                nexus.node.endpoints.base_url(NS)  # an empty cache: no pod is Ready
        finally:
            await nexus.node.close()
