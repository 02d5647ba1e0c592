"""The rules the REST API, the controllers and the webhooks share: views, bodies, the maxAgents
rule, reserved tenant names."""

from __future__ import annotations

from nexus.domain.agent import (
    AgentStatus,
    AgentView,
    agent_body,
    live_agents,
    refuse_agent,
    refuse_new_agent,
)
from nexus.domain.resources import TENANT_ID_LABEL
from nexus.domain.tenant import (
    ResourceQuota,
    TenantSpec,
    TenantStatus,
    reserved_name_problem,
    tenant_body,
)

from ..support.fakes import agent, ready_tenant


def test_the_tenant_body_carries_the_store_id() -> None:
    body = tenant_body(
        "t-1",
        "nexus-system",
        tenant_id="abc",
        display_name="Acme",
        node_profile="full",
        quota=ResourceQuota(max_agents=3, cpu="1", memory="2Gi"),
    )
    assert body["metadata"] == {
        "name": "t-1",
        "namespace": "nexus-system",
        "labels": {TENANT_ID_LABEL: "abc"},
    }
    assert body["spec"] == {
        "displayName": "Acme",
        "nodeProfile": "full",
        "resourceQuota": {"maxAgents": 3, "cpu": "1", "memory": "2Gi"},
    }


def test_a_quota_round_trips_and_omits_what_is_unset() -> None:
    assert ResourceQuota.of({"maxAgents": 2, "cpu": 4}).to_object() == {"maxAgents": 2, "cpu": "4"}
    assert ResourceQuota.of(None) == ResourceQuota()
    assert ResourceQuota(memory="1Gi").limits == {"memory": "1Gi"}


def test_views_of_a_tenant_nobody_has_reconciled() -> None:
    assert TenantStatus.of(None) == TenantStatus("Pending", None, None, 0)
    spec = TenantSpec.of({"metadata": {"name": "x"}})
    assert spec.node_profile == "full" and spec.quota == ResourceQuota()


def test_views_of_a_ready_tenant() -> None:
    st = TenantStatus.of(ready_tenant("acme"))
    assert st.ready and st.namespace == "acme" and st.agent_count == 0


def test_views_of_an_agent() -> None:
    a = agent("bot", "acme", suspend=True)
    a["status"] = {
        "phase": "Stopped",
        "nodeAck": False,
        "conditions": [{"type": "Ready", "status": "False", "reason": "Suspended"}],
    }
    view = AgentView.of(a)
    assert view.spec.suspend and view.spec.version == "1.0.0"
    assert view.status.phase == "Stopped" and view.status.reason() == "Suspended"
    fresh = AgentStatus.of(agent("new", "acme"))
    assert (fresh.phase, fresh.node_ack, fresh.last_synced_at) == ("Pending", False, None)


def test_the_agent_body() -> None:
    spec = agent("bot", "acme")["spec"]["agentSpec"]
    assert agent_body("bot", "acme", spec) == {
        "metadata": {"name": "bot", "namespace": "acme"},
        "spec": {"agentSpec": spec},
    }


def test_live_agents_are_first_come_and_exclude_deletions() -> None:
    late = agent("a-late", "ns", created="2026-01-02T00:00:00Z")
    early = agent("z-early", "ns", created="2026-01-01T00:00:00Z")
    tie = agent("b-tie", "ns", created="2026-01-02T00:00:00Z")
    gone = agent("gone", "ns")
    gone["metadata"]["deletionTimestamp"] = "2026-01-03T00:00:00Z"
    names = [a["metadata"]["name"] for a in live_agents([late, gone, tie, early])]
    assert names == ["z-early", "a-late", "b-tie"]


def test_one_more_agent_must_fit() -> None:
    live = live_agents([agent("a", "ns"), agent("b", "ns")])
    assert refuse_new_agent(None, live) is None
    assert refuse_new_agent(3, live) is None
    assert refuse_new_agent(2, live) == "exceeded quota: maxAgents=2"
    assert refuse_new_agent(0, []) == "exceeded quota: maxAgents=0"


def test_existing_agents_keep_their_places() -> None:
    live = live_agents(
        [
            agent("old", "ns", created="2026-01-01T00:00:00Z"),
            agent("new", "ns", created="2026-01-01T00:00:01Z"),
        ]
    )
    assert refuse_agent(1, live, "old") is None
    assert refuse_agent(1, live, "new") == "exceeded quota: maxAgents=1"
    assert refuse_agent(None, live, "new") is None
    assert refuse_agent(1, live, "unknown") is None


def test_reserved_tenant_names() -> None:
    for name in ("default", "nexus-system", "ops", "kube-system", "kube-x"):
        assert reserved_name_problem(name, "ops") == (
            f"tenant name {name!r} is a system namespace; choose another name"
        )
    for name in ("Acme", "a_b", "-a", "a" * 64, "bot\n"):
        assert reserved_name_problem(name, "ops") == (
            f"tenant name {name!r} is not a valid namespace name (RFC 1123 label)"
        )
    assert reserved_name_problem("acme", "ops") is None
    assert reserved_name_problem("a" * 63, "ops") is None
