"""GET /api/v1/agents builds its items straight from cached objects: the same fields and
defaults as AgentView, which every other agent route uses."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.api.routes_agents import _list_item
from nexus.domain.agent import AgentView
from nexus.runtime.transform import StringPool


def through_view(obj: dict[str, Any]) -> dict[str, Any]:
    view = AgentView.of(obj)
    return {
        "name": view.name,
        "namespace": view.namespace,
        "version": view.spec.version,
        "phase": view.status.phase,
        "nodeAck": view.status.node_ack,
        "lastSyncedAt": view.status.last_synced_at,
        "createdAt": view.created_at,
    }


META = {"name": "a1", "namespace": "t1", "creationTimestamp": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"status": None, "spec": None},
        {"status": "garbage", "spec": "garbage"},
        {"spec": {"agentSpec": {"metadata": {"version": "1.2.3"}}}},
        {"spec": {"agentSpec": {"metadata": {"version": 1.1}}}},
        {"spec": {"agentSpec": "x"}},
        {"status": {"phase": "Running", "nodeAck": True, "lastSyncedAt": "2026-01-01T00:00:01Z"}},
        {"status": {"phase": "", "nodeAck": None}},
    ],
)
def test_list_item_matches_the_agent_view(extra: dict[str, Any]) -> None:
    obj = {"metadata": dict(META), **extra}
    assert _list_item(obj) == through_view(obj)
    # Cached objects may hold frozen shared subtrees: read the same way.
    shared = StringPool().share_frozen(obj)
    assert _list_item(shared) == through_view(obj)
