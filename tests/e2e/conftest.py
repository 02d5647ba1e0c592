"""End-to-end tests against the real single-node cluster of ``make cluster-up``.

They run only when that cluster is up (``make test-e2e``); otherwise every test is skipped
with the reason. They are not part of ``make test``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest

from .cluster import ROOT, STATE, Api, Cluster, kubectl_path, read_env_file


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    kubeconfig = STATE / "kubeconfig"
    env_file = STATE / "dev-account.env"
    if not (STATE / "up").exists() or not env_file.exists():
        pytest.skip(
            f"no local cluster is up ({STATE}): run `make cluster-up` first "
            "(root on Linux with cgroup v1; see hack/cluster.sh)"
        )
    dev = read_env_file(env_file)
    c = Cluster(kubeconfig, os.environ.get("NEXUS_URL", dev["NEXUS_URL"]), kubectl_path(), dev)
    try:
        c.kubectl("get", "--raw", "/readyz", timeout=20)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the local cluster's API server does not answer: {exc}")
    return c


@pytest.fixture(scope="session")
async def api(cluster: Cluster) -> AsyncIterator[Api]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        yield Api(cluster.url, s)


@pytest.fixture(scope="session")
def repo_root() -> str:
    return str(ROOT)
