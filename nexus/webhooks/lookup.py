"""Reads the webhooks need: the tenant owning a namespace, and the live agents in it.

The manager's cache answers once it has synced; before that (the webhook server starts before
the caches, so that a restarting replica is not a hole in admission), and when the cache has
not seen an object yet (an agent applied right after its tenant), the API server is asked.
"""

from __future__ import annotations

from typing import Any

from nexus.domain.agent import live_agents
from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime import Cache, Client

Object = dict[str, Any]


class Lookup:
    def __init__(self, cache: Cache, client: Client, tenant_namespace: str) -> None:
        self.cache = cache
        self.client = client
        self.tenant_namespace = tenant_namespace

    async def tenant(self, name: str) -> Object | None:
        """The NexusTenant ``name`` (whose namespace is ``name``), or None."""
        if self.cache.has_synced:
            found = self.cache.get(TENANTS, name, self.tenant_namespace)
            if found is not None:
                return found
        return await self.client.get_or_none(TENANTS, name, self.tenant_namespace)

    async def live_agents(self, namespace: str) -> list[Object]:
        """The NexusAgents in ``namespace`` that count against ``maxAgents`` (see
        :func:`nexus.domain.agent.live_agents`)."""
        if self.cache.has_synced:
            items = self.cache.list(AGENTS, namespace)
        else:
            items, _ = await self.client.list_all(AGENTS, namespace)
        return live_agents(items)
