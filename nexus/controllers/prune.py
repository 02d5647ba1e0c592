"""Orphans on a tenant's node: agents Nexus deployed there that no NexusAgent stands for.

An agent deleted while its node was down is released by its finalizer (a deletion must not
wait for a node), and a node that keeps its agents on disk brings it back when it returns.
Each tenant's node is dedicated to the tenant, so such an agent is removed. Only agents that
Nexus marked (``AGENT_NAMESPACE_LABEL`` naming this very namespace, see ``desired_spec``)
are ever touched: whatever else runs on the node is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus.controllers.ports import CacheReader, NodeApi
from nexus.domain.resources import AGENT_NAMESPACE_LABEL, AGENTS
from nexus.node import NodeError


def marked_for(spec: Mapping[str, Any] | None, namespace: str) -> bool:
    """Whether the agent spec ``spec`` (as the node returns it) was sent by Nexus for an
    agent of ``namespace``."""
    meta = (spec or {}).get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(AGENT_NAMESPACE_LABEL) == namespace


async def prune_orphans(node: NodeApi, cache: CacheReader, namespace: str) -> list[str]:
    """Removes from the node of ``namespace`` every marked agent without a NexusAgent there;
    returns their names. A failing call raises :class:`NodeError` (agents already removed
    stay removed; the rest wait for the next pass).

    Costs one list call, plus one GET per agent on the node that has no NexusAgent.
    """
    known = {a["metadata"]["name"] for a in cache.list(AGENTS, namespace)}
    removed: list[str] = []
    for entry in await node.list_agents(namespace):
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in known:
            continue
        if not marked_for(await node.get_agent(namespace, name), namespace):
            continue
        # A NexusAgent of that name may have appeared while we asked the node: it owns the
        # node's agent now.
        if cache.get(AGENTS, name, namespace) is not None:
            continue
        try:
            await node.delete(namespace, name)
        except NodeError as exc:
            if not exc.not_found:
                raise
            continue  # gone already
        removed.append(name)
    return removed
