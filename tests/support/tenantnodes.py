"""A `nexus manager` whose tenants each get a node process of their own: per-tenant nodes.

The local node agent runs every tenant's ``astromesh-node`` pod as its own astromesh process
on a 127.x address; the manager reaches each tenant's node at its Ready pod's address
(``--node-endpoint=pod``) and holds a tenant Provisioning until its node is available (the
default ``--wait-for-node``). Each manager gets a namespace of its own, and its agent serves
only that manager's tenant namespaces, so that tenants other test modules left behind never
take a node slot here.

``manager_with_nodes(envtest, kube, workdir)`` is the async context manager; ``tenant_nodes``
is a module-scoped fixture built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexus.domain.resources import TENANT_NAMESPACE_LABEL, TENANTS
from nexus.localnode import LocalNodeAgent, PodInfo
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES

from .localnode import local_node
from .manager import ManagerProcess

#: Generous: a node pod's readiness probe runs every 10 s, and the machine is shared.
NODE_TIMEOUT = 120.0


@dataclass
class TenantNodes:
    """The manager, the agent that runs its tenants' nodes, and the manager's namespace."""

    manager: ManagerProcess
    agent: LocalNodeAgent
    namespace: str

    @property
    def url(self) -> str:
        return self.manager.url

    def nodes_of(self, namespace: str) -> list[PodInfo]:
        """The node processes the agent runs for a tenant namespace (ready or not)."""
        return [p for p in self.agent.pods() if p.namespace == namespace]

    def node_of(self, namespace: str) -> PodInfo | None:
        """The tenant's ready node process, if exactly one."""
        ready = [p for p in self.nodes_of(namespace) if p.ready and p.pid is not None]
        return ready[0] if len(ready) == 1 else None

    async def wait_node(self, namespace: str, timeout: float = NODE_TIMEOUT) -> PodInfo:
        deadline = time.monotonic() + timeout
        while (node := self.node_of(namespace)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no ready node process for {namespace}: {self.nodes_of(namespace)}"
                )
            await asyncio.sleep(0.2)
        return node


async def delete_tenants(kube: Client, tn: TenantNodes, timeout: float = 90.0) -> None:
    """Delete the manager's tenants and wait (bounded) until their node processes are gone."""
    items, _ = await kube.list_all(TENANTS, tn.namespace)
    for t in items:
        await kube.delete(TENANTS, t["metadata"]["name"], tn.namespace, ignore_not_found=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not tn.agent.pods():
            return
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def manager_with_nodes(
    envtest: Environment,
    kube: Client,
    workdir: Path,
    *,
    extra: Sequence[str] = (),
    **agent_overrides: Any,
) -> AsyncIterator[TenantNodes]:
    """A local node agent and a manager in ``--node-endpoint=pod`` mode, in a namespace of
    their own; on exit the manager's tenants are deleted (their nodes with them), the manager
    must exit 0 on SIGTERM, and the agent stops whatever is left."""
    namespace = f"nexus-{uuid.uuid4().hex[:8]}"
    await kube.create(NAMESPACES, {"metadata": {"name": namespace, "labels": {"nexus-test": "1"}}})
    overrides: dict[str, Any] = {
        "namespace_selector": f"{TENANT_NAMESPACE_LABEL}={namespace}",
        **agent_overrides,
    }
    async with local_node(envtest, workdir / "localnode", **overrides) as agent:
        proc = ManagerProcess(
            envtest.kubeconfig_path,
            workdir,
            node_url="pod",
            # --wait-for-node is the default; said here so that no harness default turns it off.
            extra=[f"--namespace={namespace}", "--wait-for-node", *extra],
        )
        await proc.start()
        tn = TenantNodes(proc, agent, namespace)
        try:
            yield tn
        finally:
            with contextlib.suppress(Exception):
                await delete_tenants(kube, tn)
            code = await proc.stop()
            assert code == 0, proc.log_tail()
    await kube.delete(NAMESPACES, namespace, ignore_not_found=True)


@pytest.fixture(scope="module")
async def tenant_nodes(
    envtest: Environment, kube: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TenantNodes]:
    """A manager with per-tenant node processes for the module (at most 4 nodes at a time)."""
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes"):
        pytest.skip("a real cluster has kubelets of its own")
    async with manager_with_nodes(
        envtest, kube, tmp_path_factory.mktemp("tenant-nodes"), max_pods=4
    ) as tn:
        yield tn
