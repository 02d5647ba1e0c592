"""Fixtures of the reliability suite.

Three control planes at most: the session ``envtest`` (with kube-controller-manager) for the
cases that only need a cluster; ``bulk_env`` here, without kube-controller-manager, for the
cases with hundreds or thousands of tenants (no ReplicaSets and Pods multiplying the load);
and per-module private environments for the cases that restart or compact the control plane.
Every case runs its managers with a system namespace of its own (``--namespace``), so managers
of different cases never see each other's tenants.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES

from ..conftest import NEXUS_CRDS
from ..support.faults import purge  # noqa: F401 - the cases import it from here
from ..support.node import AstromeshNode

pytestmark = pytest.mark.cluster


def short_id() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="session")
async def bulk_env() -> AsyncIterator[Environment]:
    """A control plane without kube-controller-manager, for the cases with many tenants."""
    async with Environment(crd_paths=[NEXUS_CRDS]) as env:
        yield env


@pytest.fixture(scope="session")
async def bulk_api(bulk_env: Environment) -> AsyncIterator[k8s_client.ApiClient]:
    async with await bulk_env.api_client() as api:
        yield api


@pytest.fixture(scope="session")
async def bulk_kube(bulk_api: k8s_client.ApiClient) -> AsyncIterator[Client]:
    client = Client(bulk_api)
    yield client
    await client.close()


@pytest.fixture
async def node() -> AsyncIterator[AstromeshNode]:
    """A real astromesh node of this test's own (tests stop and restart it)."""
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


async def make_system_namespace(kube: Client, prefix: str = "rel") -> str:
    name = f"{prefix}-{short_id()}"
    await kube.create(NAMESPACES, {"metadata": {"name": name}})
    return name
