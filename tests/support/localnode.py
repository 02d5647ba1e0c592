"""The local node agent as a test fixture: per-tenant astromesh node processes on 127.x.

``local_node(envtest, root)`` is an async context manager for one agent; the ``localnode``
fixture gives a test module one agent (and thus a kubelet) on the session's control plane.
Each agent gets a random 127.x.y.0/24 range and a node name of its own, so that several test
sessions on one machine, or several agents in one session, do not collide.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nexus.localnode import LocalNodeAgent, LocalNodeConfig
from nexus.runtime.envtest import Environment


def random_range() -> str:
    """A /24 of 127.0.0.0/8 away from 127.0.0.x (the host's own addresses)."""
    return f"127.{random.randint(64, 254)}.{random.randint(0, 255)}.0/24"


def agent_config(root: Path, **overrides: Any) -> LocalNodeConfig:
    """Settings for tests: quick restarts, quick heartbeats, a small cap."""
    base = LocalNodeConfig(
        node_name=f"nexus-local-{uuid.uuid4().hex[:6]}",
        address_range=random_range(),
        root=root,
        max_pods=10,
        restart_backoff_base=0.5,
        restart_backoff_cap=2.0,
        lease_renew_interval=2.0,
        pending_retry=2.0,
        shutdown_grace=5.0,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def local_node(
    envtest: Environment, root: Path, **overrides: Any
) -> AsyncIterator[LocalNodeAgent]:
    """One running agent; stopped (all its processes with it) on exit."""
    api = await envtest.api_client()
    async with api, LocalNodeAgent(api, agent_config(root, **overrides)) as agent:
        yield agent


@pytest.fixture(scope="module")
async def localnode(
    envtest: Environment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalNodeAgent]:
    """A local node agent for the module: it runs every astromesh node pod of the cluster."""
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes"):
        pytest.skip("a real cluster has kubelets of its own")
    async with local_node(envtest, tmp_path_factory.mktemp("localnode")) as agent:
        yield agent
