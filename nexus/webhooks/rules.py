"""The rules the webhooks enforce, all kept in :mod:`nexus.domain`: one implementation each,
so that kubectl, the REST API and the reconcilers agree."""

from __future__ import annotations

from nexus.domain.agent import live_agents, refuse_new_agent
from nexus.domain.agentspec import agent_name, validate_agent
from nexus.domain.tenant import reserved_name_problem

__all__ = [
    "agent_name",
    "live_agents",
    "refuse_new_agent",
    "reserved_name_problem",
    "validate_agent",
]
