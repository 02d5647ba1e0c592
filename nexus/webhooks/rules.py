"""The rules the webhooks enforce, taken from where the REST API and the controllers keep
them: one implementation each, so that kubectl, the API and the reconcilers agree.

This is the only module of the package that imports the API or the controllers.
"""

from __future__ import annotations

# moves to nexus.domain
from nexus.api.agentspec import agent_name, validate_agent

# moves to nexus.domain
from nexus.api.routes_agents import max_agents_exceeded

# moves to nexus.domain
from nexus.controllers.tenant import reserved_name_problem

__all__ = ["agent_name", "max_agents_exceeded", "reserved_name_problem", "validate_agent"]
