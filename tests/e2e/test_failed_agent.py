"""A failed agent, debugged with what a user has: ``kubectl get``, ``describe``, events, logs.

The agent passes the admission webhooks (a Glyph program with the glyph pattern is a valid
spec) and the tenant's node refuses to deploy it (the node image has no Glyph compiler). The
reason and the node's own words must reach the agent's status, its events, the manager's log
and the node pod's log.
"""

from __future__ import annotations

import secrets
from typing import Any

from .cluster import SYSTEM_NS, Api, Cluster, agent_manifest, eventually


def live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


async def test_a_failed_agent_explains_itself_through_kubectl(cluster: Cluster, api: Api) -> None:
    auth = await api.user(cluster.dev["NEXUS_DEV_EMAIL"], cluster.dev["NEXUS_DEV_PASSWORD"])
    _, tenant = await api.call("GET", f"/api/v1/tenants/{cluster.dev['NEXUS_DEV_TENANT']}",
                               200, headers=auth)  # fmt: skip
    ns = tenant["namespace"]
    name = f"e2e-failed-{secrets.token_hex(3)}"
    manifest = agent_manifest(
        name, ns, name, "ollama", orchestration={"pattern": "glyph"}, program="answer = 42"
    )
    await cluster.akubectl("apply", "-f", "-", stdin=manifest)
    try:

        async def failed() -> dict[str, Any] | None:
            agent = await cluster.aget("nexusagent", "-n", ns, name)
            return agent if (agent.get("status") or {}).get("phase") == "Failed" else None

        agent = await eventually(failed, 180, f"agent {name} Failed")

        # `kubectl get` shows the phase; the Ready condition says why, in the node's words.
        table = await cluster.akubectl("get", "nexusagent", "-n", ns, name)
        assert "Failed" in table, table
        ready = next(c for c in agent["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "InvalidSpec", ready
        assert "glyph" in ready["message"].lower(), ready
        described = await cluster.akubectl("describe", "nexusagent", "-n", ns, name)
        assert "InvalidSpec" in described and ready["message"][:60] in described, described

        # An event on the agent, with the same reason and message.
        events = await cluster.aget(
            "events", "-n", ns, "--field-selector",
            f"involvedObject.kind=NexusAgent,involvedObject.name={name}",
        )  # fmt: skip
        warnings = [e for e in events["items"] if e["type"] == "Warning"]
        assert any(e["reason"] == "InvalidSpec" for e in warnings), events["items"]
        assert any("glyph" in e["message"].lower() for e in warnings), warnings

        # The manager's log names the agent and the node's error.
        (manager,) = live(await cluster.manager_pods())
        log = await cluster.akubectl("logs", "-n", SYSTEM_NS, manager["metadata"]["name"])
        lines = [line for line in log.splitlines() if "agent.node_error" in line]
        assert any(name in line for line in lines), log[-3000:]

        # The tenant's node pod logged the refused deploy.
        (node,) = live(await cluster.node_pods(ns))
        node_log = await cluster.akubectl("logs", "-n", ns, node["metadata"]["name"])
        refused = [line for line in node_log.splitlines() if f"/v1/agents/{name}/deploy" in line]
        assert refused and " 400 " in refused[-1], node_log[-3000:]
    finally:
        await cluster.akubectl("delete", "nexusagent", "-n", ns, name, "--wait=false")
