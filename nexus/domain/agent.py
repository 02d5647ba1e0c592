"""NexusAgent: typed views of its spec and status, its body, and the ``maxAgents`` rule.

The REST API (refusing a create), the agent controller (holding back an agent created with
kubectl) and the tenant controller (``status.agentCount``) all count agents the same way,
here: an agent being deleted no longer counts, and the oldest agents keep their places.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nexus.domain.agentspec import agent_version
from nexus.domain.resources import AgentPhase
from nexus.runtime.objects import Object, find_condition


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class AgentSpec:
    #: The astromesh/v1 Agent document, as the user wrote it.
    agent_spec: Mapping[str, Any]
    suspend: bool

    @classmethod
    def of(cls, agent: Mapping[str, Any]) -> AgentSpec:
        spec = _mapping(agent.get("spec"))
        return cls(agent_spec=_mapping(spec.get("agentSpec")), suspend=bool(spec.get("suspend")))

    @property
    def version(self) -> str | None:
        return agent_version(self.agent_spec)


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What the agent controller reported; an agent it has not seen yet is Pending."""

    phase: str
    node_ack: bool
    last_synced_at: str | None
    observed_generation: int | None
    conditions: list[Object]

    @classmethod
    def of(cls, agent: Mapping[str, Any]) -> AgentStatus:
        status = _mapping(agent.get("status"))
        return cls(
            phase=str(status.get("phase") or AgentPhase.PENDING),
            node_ack=bool(status.get("nodeAck")),
            last_synced_at=status.get("lastSyncedAt"),
            observed_generation=status.get("observedGeneration"),
            conditions=list(status.get("conditions") or ()),
        )

    def reason(self, condition: str = "Ready") -> str | None:
        cond = find_condition(self.conditions, condition)
        return None if cond is None else cond.get("reason")


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as the REST API shows it."""

    name: str
    namespace: str
    created_at: str | None
    spec: AgentSpec
    status: AgentStatus

    @classmethod
    def of(cls, agent: Mapping[str, Any]) -> AgentView:
        meta = agent["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            created_at=meta.get("creationTimestamp"),
            spec=AgentSpec.of(agent),
            status=AgentStatus.of(agent),
        )


def agent_body(name: str, namespace: str, agent_spec: Mapping[str, Any]) -> Object:
    """A new NexusAgent running the (validated) astromesh/v1 document ``agent_spec``."""
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"agentSpec": dict(agent_spec)},
    }


# -- maxAgents ----------------------------------------------------------------------------------


def _being_deleted(obj: Mapping[str, Any]) -> bool:
    return bool(_mapping(obj.get("metadata")).get("deletionTimestamp"))


def live_agents(agents: Iterable[Object]) -> list[Object]:
    """The agents that count against ``maxAgents``, first come first.

    An agent being deleted no longer counts: its place is free as soon as its deletion starts.
    Ties in creation time (one-second resolution) are broken by name.
    """
    alive = [a for a in agents if not _being_deleted(a)]
    alive.sort(key=lambda a: (a["metadata"].get("creationTimestamp") or "", a["metadata"]["name"]))
    return alive


def quota_exceeded(max_agents: int) -> str:
    return f"exceeded quota: maxAgents={max_agents}"


def refuse_new_agent(max_agents: int | None, live: Sequence[Object]) -> str | None:
    """Why one more agent does not fit next to ``live`` (see :func:`live_agents`), or None."""
    if max_agents is not None and len(live) >= max_agents:
        return quota_exceeded(max_agents)
    return None


def refuse_agent(max_agents: int | None, live: Sequence[Object], name: str) -> str | None:
    """Why the existing agent ``name`` is beyond the quota, or None.

    The first ``max_agents`` of ``live`` keep their places, so lowering the quota holds back
    the newest agents, never one that was already running before them.
    """
    if max_agents is None:
        return None
    names = [a["metadata"]["name"] for a in live]
    if name in names and names.index(name) >= max_agents:
        return quota_exceeded(max_agents)
    return None
