"""Module-scoped `nexus manager` subprocess with its own real astromesh node."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES

from ..support.manager import ManagerProcess
from ..support.node import AstromeshNode


@pytest.fixture(scope="module")
async def api_node() -> AsyncIterator[AstromeshNode]:
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


@pytest.fixture(scope="module")
async def manager(
    envtest: Environment,
    kube: Client,
    api_node: AstromeshNode,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ManagerProcess]:
    """A real `nexus manager` process (API included) for the module; must exit 0 on SIGTERM."""
    if await kube.get_or_none(NAMESPACES, "nexus-system") is None:
        await kube.create(NAMESPACES, {"metadata": {"name": "nexus-system"}})
    proc = ManagerProcess(
        envtest.kubeconfig_path, tmp_path_factory.mktemp("manager"), node_url=api_node.url
    )
    await proc.start()
    yield proc
    code = await proc.stop()
    assert code == 0, proc.log_tail()
