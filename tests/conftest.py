"""Shared fixtures: one real control plane per test session, a namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES, Resource

from .support.postgres import PostgresServer, find_bindir
from .support.stores import StoreBackend

# Fixtures shared by several directories: a local node agent, a manager with per-tenant nodes.
pytest_plugins = ["tests.support.localnode", "tests.support.tenantnodes"]

ROOT = Path(__file__).resolve().parents[1]
TEST_CRDS = ROOT / "tests" / "fixtures" / "crds"
NEXUS_CRDS = ROOT / "config" / "crd" / "bases"

WIDGETS = Resource("test.nexus.io", "v1", "widgets", "Widget")

# Control-plane processes started by the session fixture; checked when the session ends.
_started_pids: list[int] = []


def crd_paths() -> list[Path]:
    return [p for p in (TEST_CRDS, NEXUS_CRDS) if p.is_dir() and any(p.glob("*.yaml"))]


@pytest.fixture(scope="session")
async def envtest() -> AsyncIterator[Environment]:
    """A real etcd + kube-apiserver + kube-controller-manager for the whole session."""
    env = Environment(crd_paths=crd_paths(), with_controller_manager=True)
    async with env:
        _started_pids.extend(env.pids)
        yield env


@pytest.fixture(scope="session")
async def api_client(envtest: Environment) -> AsyncIterator[k8s_client.ApiClient]:
    async with await envtest.api_client() as api:
        yield api


@pytest.fixture(scope="session")
async def kube(api_client: k8s_client.ApiClient) -> AsyncIterator[Client]:
    """The runtime's dynamic client, authenticated as cluster admin."""
    client = Client(api_client)
    yield client
    await client.close()


@pytest.fixture
async def namespace(kube: Client) -> AsyncIterator[str]:
    """A fresh namespace per test; deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await kube.create(NAMESPACES, {"metadata": {"name": name, "labels": {"nexus-test": "1"}}})
    yield name
    if os.environ.get("NEXUS_KEEP_NAMESPACES") != "1":
        await kube.delete(NAMESPACES, name, ignore_not_found=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any control-plane process outlived the session."""
    leftovers = []
    for pid in _started_pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z":
            leftovers.append(pid)
    if leftovers:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nERROR: control-plane processes left running: {leftovers}")


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's package) for the session, on a free loopback port.

    Skips only when PostgreSQL is not installed (``.ci/run`` installs it); a server that is
    installed but does not start fails the tests that need it.
    """
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed (apt-get install postgresql; .ci/run does): "
            "the PostgreSQL side of the store tests cannot run"
        )
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server (dropped afterwards)."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """Each store test once per backend: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return StoreBackend("sqlite", str(tmp_path / "nexus.db"))
    return StoreBackend("postgres", request.getfixturevalue("pg_url"))
