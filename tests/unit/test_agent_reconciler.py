"""NexusAgentReconciler, branch by branch, on in-memory fakes (no control plane, no node)."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.domain.resources import AGENT_FINALIZER, AGENTS, TENANTS
from nexus.node import NodeError
from nexus.runtime import Request, RequeueAfterError, Result
from nexus.runtime.client import ApiError

from ..support.fakes import SYSTEM_NS, World, agent, ready_tenant, tenant

NS = "acme"


@pytest.fixture
def world() -> World:
    w = World()
    w.server.put(TENANTS, ready_tenant(NS))
    return w


def status(world: World, name: str = "bot") -> dict[str, Any]:
    return world.agent(name, NS).get("status") or {}


def reason(world: World, name: str = "bot") -> str:
    return next(c["reason"] for c in status(world, name)["conditions"] if c["type"] == "Ready")


async def running(world: World, name: str = "bot", **spec: Any) -> None:
    world.server.put(AGENTS, agent(name, NS, **spec))
    assert await world.reconcile_agent(name, NS) == Result(requeue_after=World.RESYNC)
    assert status(world, name)["phase"] == "Running"
    world.forget_calls()


def bump_generation(world: World, name: str = "bot", **spec: Any) -> None:
    obj = world.server.objects[("nexusagents", NS, name)]
    obj["spec"].update(spec)
    obj["metadata"]["generation"] += 1


# -- the happy path -----------------------------------------------------------------------------


async def test_an_agent_that_is_gone_is_left_alone(world: World) -> None:
    assert await world.reconcile_agent("ghost", NS) is None
    assert world.server.calls == [] and world.node.calls == []


async def test_an_agent_is_registered_deployed_and_running(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    assert await world.reconcile_agent("bot", NS) == Result(requeue_after=World.RESYNC)
    st = status(world)
    assert st["phase"] == "Running" and st["nodeAck"] is True
    assert st["lastSyncedAt"] == "2026-01-01T00:00:00Z"  # the FakeClock's time
    assert st["observedGeneration"] == 1
    assert reason(world) == "Deployed"
    assert AGENT_FINALIZER in world.agent("bot", NS)["metadata"]["finalizers"]
    assert [c[0] for c in world.node.calls] == ["get_agent", "register", "deploy"]
    assert world.node.state(NS, "bot") == "deployed"
    assert world.events.reasons == ["Deployed"]


async def test_deploying_is_reported_before_the_node_is_called(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    await world.reconcile_agent("bot", NS)
    phases = [c.body["phase"] for c in world.server.calls if c.verb == "patch_status"]
    assert phases == ["Deploying", "Running"]


async def test_the_node_gets_the_spec_under_the_resources_name(world: World) -> None:
    obj = agent("bot", NS)
    obj["spec"]["agentSpec"]["metadata"]["name"] = "something-else"
    world.server.put(AGENTS, obj)
    await world.reconcile_agent("bot", NS)
    assert world.node.agents[NS]["bot"].config["metadata"]["name"] == "bot"
    assert "something-else" not in world.node.agents[NS]


async def test_converged_costs_one_node_get_and_no_write(world: World) -> None:
    await running(world)
    world.clock.advance(3600)
    assert await world.reconcile_agent("bot", NS) == Result(requeue_after=World.RESYNC)
    assert world.node.calls == [("get_agent", NS, "bot")]
    assert world.server.writes() == []
    assert world.events.events == []
    assert status(world)["lastSyncedAt"] == "2026-01-01T00:00:00Z"


async def test_a_changed_spec_is_pushed_again(world: World) -> None:
    await running(world)
    world.clock.advance(120)
    bump_generation(world)
    world.server.objects[("nexusagents", NS, "bot")]["spec"]["agentSpec"]["metadata"]["version"] = (
        "2.0.0"
    )
    await world.reconcile_agent("bot", NS)
    assert [c[0] for c in world.node.calls] == ["get_agent", "register", "deploy"]
    assert world.node.agents[NS]["bot"].config["metadata"]["version"] == "2.0.0"
    st = status(world)
    assert st["phase"] == "Running" and st["observedGeneration"] == 2
    assert st["lastSyncedAt"] == "2026-01-01T00:02:00Z"


async def test_an_agent_the_node_forgot_is_deployed_again(world: World) -> None:
    await running(world)
    world.node.agents.clear()  # the node restarted with an empty store
    world.clock.advance(60)
    await world.reconcile_agent("bot", NS)
    assert world.node.state(NS, "bot") == "deployed"
    assert status(world)["lastSyncedAt"] == "2026-01-01T00:01:00Z"


async def test_a_registered_but_undeployed_agent_is_only_deployed(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    world.node.failures["deploy"] = NodeError(503, "busy")
    with pytest.raises(RequeueAfterError):
        await world.reconcile_agent("bot", NS)
    world.forget_calls()
    await world.reconcile_agent("bot", NS)
    assert [c[0] for c in world.node.calls] == ["get_agent", "deploy"]
    assert status(world)["phase"] == "Running"


# -- waiting for the tenant -----------------------------------------------------------------------


async def test_without_a_tenant_the_agent_waits_in_pending(world: World) -> None:
    world.server.put(AGENTS, agent("bot", "nobody"))
    result = await world.reconcile_agent("bot", "nobody")
    assert result == Result(requeue_after=World.PENDING_RETRY)  # a plain retry, not an error
    st = world.agent("bot", "nobody")["status"]
    assert st["phase"] == "Pending" and st["nodeAck"] is False
    assert "no Ready NexusTenant owns namespace nobody" in st["message"]
    assert AGENT_FINALIZER in world.agent("bot", "nobody")["metadata"]["finalizers"]
    assert world.node.calls == []


async def test_a_tenant_that_is_not_ready_yet_keeps_the_agent_pending(world: World) -> None:
    t = tenant("beta")
    t["status"] = {"phase": "Provisioning", "namespace": "beta"}
    world.server.put(TENANTS, t)
    world.server.put(AGENTS, agent("bot", "beta"))
    assert await world.reconcile_agent("bot", "beta") == Result(requeue_after=World.PENDING_RETRY)
    assert world.agent("bot", "beta")["status"]["phase"] == "Pending"
    assert world.node.calls == []


async def test_a_pending_agent_runs_once_its_tenant_is_ready(world: World) -> None:
    t = tenant("beta")
    t["status"] = {"phase": "Provisioning", "namespace": "beta"}
    world.server.put(TENANTS, t)
    world.server.put(AGENTS, agent("bot", "beta"))
    await world.reconcile_agent("bot", "beta")
    world.server.objects[("nexustenants", SYSTEM_NS, "beta")]["status"]["phase"] = "Ready"
    assert await world.reconcile_agent("bot", "beta") == Result(requeue_after=World.RESYNC)
    assert world.agent("bot", "beta")["status"]["phase"] == "Running"


async def test_waiting_again_writes_nothing_new(world: World) -> None:
    world.server.put(AGENTS, agent("bot", "nobody"))
    await world.reconcile_agent("bot", "nobody")
    world.forget_calls()
    world.clock.advance(15)
    await world.reconcile_agent("bot", "nobody")
    assert world.server.writes() == []


# -- maxAgents -----------------------------------------------------------------------------------


def quota(world: World, max_agents: int) -> None:
    world.server.objects[("nexustenants", SYSTEM_NS, NS)]["spec"]["resourceQuota"]["maxAgents"] = (
        max_agents
    )


async def test_the_newest_agent_beyond_the_quota_fails(world: World) -> None:
    quota(world, 1)
    world.server.put(AGENTS, agent("old", NS, created="2026-01-01T00:00:00Z"))
    world.server.put(AGENTS, agent("new", NS, created="2026-01-01T00:00:05Z"))
    assert await world.reconcile_agent("new", NS) is None
    st = status(world, "new")
    assert st["phase"] == "Failed" and st["message"] == "exceeded quota: maxAgents=1"
    assert reason(world, "new") == "QuotaExceeded"
    assert world.events.reasons == ["QuotaExceeded"]
    assert world.node.calls == []
    assert await world.reconcile_agent("old", NS) == Result(requeue_after=World.RESYNC)
    assert status(world, "old")["phase"] == "Running"


async def test_an_agent_over_quota_is_reported_once(world: World) -> None:
    quota(world, 0)
    world.server.put(AGENTS, agent("bot", NS))
    await world.reconcile_agent("bot", NS)
    world.forget_calls()
    assert await world.reconcile_agent("bot", NS) is None
    assert world.server.writes() == [] and world.events.events == []


async def test_an_agent_being_deleted_frees_its_place(world: World) -> None:
    quota(world, 1)
    old = agent("old", NS, created="2026-01-01T00:00:00Z")
    old["metadata"]["deletionTimestamp"] = "2026-01-01T00:10:00Z"
    old["metadata"]["finalizers"] = [AGENT_FINALIZER]
    world.server.put(AGENTS, old)
    world.server.put(AGENTS, agent("new", NS, created="2026-01-01T00:00:05Z"))
    await world.reconcile_agent("new", NS)
    assert status(world, "new")["phase"] == "Running"


async def test_raising_the_quota_lets_a_held_back_agent_run(world: World) -> None:
    quota(world, 1)
    world.server.put(AGENTS, agent("old", NS, created="2026-01-01T00:00:00Z"))
    world.server.put(AGENTS, agent("new", NS, created="2026-01-01T00:00:05Z"))
    await world.reconcile_agent("new", NS)
    quota(world, 2)
    assert await world.reconcile_agent("new", NS) == Result(requeue_after=World.RESYNC)
    assert status(world, "new")["phase"] == "Running"


async def test_same_creation_second_is_first_come_by_name(world: World) -> None:
    quota(world, 1)
    world.server.put(AGENTS, agent("b", NS))
    world.server.put(AGENTS, agent("a", NS))
    await world.reconcile_agent("b", NS)
    assert status(world, "b")["phase"] == "Failed"


# -- the node refused the spec --------------------------------------------------------------------


async def test_a_spec_the_node_refused_fails_without_retry(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    world.node.failures["register"] = NodeError(422, "unknown provider")
    assert await world.reconcile_agent("bot", NS) is None  # no RequeueAfterError either
    st = status(world)
    assert st["phase"] == "Failed" and st["message"] == "unknown provider"
    assert reason(world) == "InvalidSpec"
    assert world.events.events[-1].type == "Warning"
    assert world.events.events[-1].reason == "InvalidSpec"


async def test_a_refused_spec_is_not_sent_again_until_it_changes(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    world.node.failures["register"] = NodeError(400, "bad program")
    await world.reconcile_agent("bot", NS)
    world.forget_calls()
    assert await world.reconcile_agent("bot", NS) is None
    assert world.node.calls == [] and world.server.writes() == []
    bump_generation(world)
    assert await world.reconcile_agent("bot", NS) == Result(requeue_after=World.RESYNC)
    assert status(world)["phase"] == "Running"


# -- the node fails -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        NodeError(503, "Runtime not initialized"),
        NodeError(500, "internal error"),
        NodeError(0, "TimeoutError"),
        NodeError(0, "ClientConnectorError: Connection refused"),
    ],
    ids=["5xx", "500", "timeout", "refused"],
)
async def test_a_failing_node_sets_failed_and_raises_requeue_after(
    world: World, failure: NodeError
) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    world.node.down = failure
    with pytest.raises(RequeueAfterError) as err:
        await world.reconcile_agent("bot", NS)
    assert err.value.requeue_after == World.ERROR_RETRY
    assert failure.message in err.value.reason
    st = status(world)
    assert st["phase"] == "Failed" and st["nodeAck"] is False
    assert reason(world) == "NodeUnavailable"
    assert world.events.reasons[-1] == "NodeUnavailable"


async def test_a_node_outage_of_a_running_agent_is_reported(world: World) -> None:
    await running(world)
    world.node.down = NodeError(0, "TimeoutError")
    with pytest.raises(RequeueAfterError):
        await world.reconcile_agent("bot", NS)
    assert status(world)["phase"] == "Failed"


async def test_the_agent_recovers_when_the_node_is_back(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS))
    world.node.down = NodeError(503, "starting")
    with pytest.raises(RequeueAfterError):
        await world.reconcile_agent("bot", NS)
    world.node.down = None
    world.clock.advance(30)
    assert await world.reconcile_agent("bot", NS) == Result(requeue_after=World.RESYNC)
    st = status(world)
    assert st["phase"] == "Running" and st["nodeAck"] is True
    assert st["lastSyncedAt"] == "2026-01-01T00:00:30Z"


async def test_a_node_failure_of_an_agent_deleted_meanwhile_is_not_retried(world: World) -> None:
    await running(world)
    world.cache.sync()
    del world.server.objects[("nexusagents", NS, "bot")]  # the cache has not seen it go yet
    world.node.down = NodeError(503, "down")
    assert await world.agents.reconcile(Request(name="bot", namespace=NS)) is None
    assert [c.verb for c in world.server.writes()] == ["patch_status"]  # answered 404


async def test_a_status_write_error_after_a_node_failure_propagates(world: World) -> None:
    await running(world)
    world.node.down = NodeError(503, "down")
    world.server.fail("patch_status", AGENTS, ApiError(500, "InternalError"))
    with pytest.raises(ApiError):
        await world.reconcile_agent("bot", NS)


# -- suspend / resume ---------------------------------------------------------------------------


async def test_suspending_a_running_agent_pauses_it(world: World) -> None:
    await running(world)
    bump_generation(world, suspend=True)
    world.clock.advance(10)
    assert await world.reconcile_agent("bot", NS) == Result(requeue_after=World.RESYNC)
    assert [c[0] for c in world.node.calls] == ["get_agent", "pause"]
    assert world.node.state(NS, "bot") == "paused"
    st = status(world)
    assert st["phase"] == "Stopped" and st["nodeAck"] is False
    assert reason(world) == "Suspended"
    assert world.events.reasons == ["Stopped"]


async def test_a_stopped_agent_costs_one_get_and_no_write(world: World) -> None:
    await running(world)
    bump_generation(world, suspend=True)
    await world.reconcile_agent("bot", NS)
    world.forget_calls()
    await world.reconcile_agent("bot", NS)
    assert world.node.calls == [("get_agent", NS, "bot")]
    assert world.server.writes() == [] and world.events.events == []


async def test_an_agent_created_suspended_is_registered_not_deployed(world: World) -> None:
    world.server.put(AGENTS, agent("bot", NS, suspend=True))
    await world.reconcile_agent("bot", NS)
    assert [c[0] for c in world.node.calls] == ["get_agent", "register"]
    assert world.node.state(NS, "bot") == "draft"
    assert status(world)["phase"] == "Stopped"


async def test_resuming_deploys_without_registering_again(world: World) -> None:
    await running(world)
    bump_generation(world, suspend=True)
    await world.reconcile_agent("bot", NS)
    world.forget_calls()
    bump_generation(world, suspend=False)
    assert await world.reconcile_agent("bot", NS) == Result(requeue_after=World.RESYNC)
    assert [c[0] for c in world.node.calls] == ["get_agent", "deploy"]
    st = status(world)
    assert st["phase"] == "Running" and st["nodeAck"] is True
    assert world.events.reasons == ["Deployed"]


# -- deletion ------------------------------------------------------------------------------------


def delete_agent(world: World, name: str = "bot", ns: str = NS) -> None:
    world.server.objects[("nexusagents", ns, name)]["metadata"]["deletionTimestamp"] = (
        "2026-01-01T01:00:00Z"
    )


async def test_deletion_removes_the_agent_from_its_node(world: World) -> None:
    await running(world)
    delete_agent(world)
    assert await world.reconcile_agent("bot", NS) is None
    assert world.node.calls == [("delete", NS, "bot")]
    assert world.node.state(NS, "bot") is None
    assert world.server.peek(AGENTS, "bot", NS) is None


@pytest.mark.parametrize(
    "failure",
    [NodeError(0, "ClientConnectorError"), NodeError(503, "down"), NodeError(404, "gone")],
)
async def test_deletion_with_a_dead_node_still_completes(world: World, failure: NodeError) -> None:
    await running(world)
    delete_agent(world)
    world.node.down = failure
    assert await world.reconcile_agent("bot", NS) is None
    assert world.server.peek(AGENTS, "bot", NS) is None  # the finalizer is gone


async def test_deletion_without_a_tenant_does_not_call_a_node(world: World) -> None:
    world.server.put(AGENTS, agent("bot", "nobody"))
    await world.reconcile_agent("bot", "nobody")
    world.forget_calls()
    delete_agent(world, ns="nobody")
    assert await world.reconcile_agent("bot", "nobody") is None
    assert world.node.calls == []
    assert world.server.peek(AGENTS, "bot", "nobody") is None


async def test_deletion_without_our_finalizer_does_nothing(world: World) -> None:
    obj = agent("bot", NS)
    obj["metadata"]["finalizers"] = ["someone.else/cleanup"]
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    world.server.put(AGENTS, obj)
    assert await world.reconcile_agent("bot", NS) is None
    assert world.node.calls == [] and world.server.calls == []
