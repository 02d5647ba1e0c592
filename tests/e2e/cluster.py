"""The local cluster of ``hack/cluster.sh up``, as the end-to-end tests see it.

Everything goes through what a user has: the kubeconfig it prints, ``kubectl``, the REST API at
the URL it prints, and plain HTTP to a pod's IP (the test runs on the node).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("NEXUS_CLUSTER_DIR", "/var/lib/nexus-cluster"))
SYSTEM_NS = "nexus-system"
MANAGER_SELECTOR = "control-plane=controller-manager"
NODE_SELECTOR = "app.kubernetes.io/name=astromesh-node"


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def kubectl_path() -> str:
    assets = subprocess.run(
        [str(ROOT / "hack" / "setup-envtest.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return str(Path(assets) / "kubectl")


@dataclass
class Cluster:
    kubeconfig: Path
    url: str
    kubectl_bin: str
    dev: dict[str, str]

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> str:
        out = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, timeout=timeout, check=False, input=stdin,
        )  # fmt: skip
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    async def akubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return await asyncio.to_thread(self.kubectl, *args, check=check, stdin=stdin)

    async def aget(self, *args: str) -> Any:
        return await asyncio.to_thread(self.get, *args)

    async def manager_pods(self) -> list[dict[str, Any]]:
        pods = await self.aget("pods", "-n", SYSTEM_NS, "-l", MANAGER_SELECTOR)
        return list(pods["items"])

    async def node_pods(self, namespace: str) -> list[dict[str, Any]]:
        pods = await self.aget("pods", "-n", namespace, "-l", NODE_SELECTOR)
        return list(pods["items"])


def pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return (
        status.get("phase") == "Running"
        and conds.get("Ready") == "True"
        and not (pod["metadata"].get("deletionTimestamp"))
    )


async def eventually[T](
    probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 1.0
) -> T:
    """Poll until ``probe`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        got = await probe()
        if got:
            return got
        last = got
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Api:
    """The REST API at the URL ``cluster-up`` printed."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.s = session

    async def call(
        self, method: str, path: str, expect: int | None = None, **kw: Any
    ) -> tuple[int, Any]:
        async with self.s.request(method, self.url + path, **kw) as r:
            body = await r.json(content_type=None) if r.content_length != 0 else None
            if expect is not None:
                assert r.status == expect, f"{method} {path}: HTTP {r.status}: {body}"
            return r.status, body

    async def user(self, email: str, password: str = "correct-horse-battery") -> dict[str, str]:
        """Register (once) and log in; the Authorization header of that user."""
        await self.call(
            "POST", "/auth/register",
            json={"email": email, "password": password, "displayName": "E2E"},
        )  # fmt: skip
        _, body = await self.call(
            "POST", "/auth/login", 200, json={"email": email, "password": password}
        )
        return {"Authorization": f"Bearer {body['accessToken']}"}

    async def tenant(self, auth: dict[str, str], name: str) -> dict[str, Any]:
        _, body = await self.call(
            "POST", "/api/v1/tenants", 201, headers=auth,
            json={"displayName": name, "nodeProfile": "full"},
        )  # fmt: skip
        return dict(body)

    async def key(self, auth: dict[str, str], tenant_id: str) -> str:
        _, body = await self.call(
            "POST", f"/api/v1/tenants/{tenant_id}/keys", 201, headers=auth, json={"label": "e2e"}
        )
        return str(body["rawKey"])

    async def wait_tenant_ready(
        self, auth: dict[str, str], tenant_id: str, timeout: float = 180
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            _, body = await self.call("GET", f"/api/v1/tenants/{tenant_id}", 200, headers=auth)
            return dict(body) if body.get("phase") == "Ready" else None

        return await eventually(probe, timeout, f"tenant {tenant_id} Ready")


def agent_manifest(name: str, namespace: str, inner: str, provider: str, **spec: object) -> str:
    """A NexusAgent for ``kubectl apply -f -``; ``spec`` adds to the agent spec's ``spec``."""
    return json.dumps({
        "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"agentSpec": {
            "apiVersion": "astromesh/v1", "kind": "Agent",
            "metadata": {"name": inner, "version": "1.0.0"},
            "spec": {
                "identity": {"display_name": "E2E agent"},
                "model": {"primary": {"provider": provider, "model": "llama3.1:8b"}},
                "orchestration": {"pattern": "react"},
                **spec,
            },
        }},
    })  # fmt: skip


AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: {name}, version: "1.0.0"}}
spec:
  identity: {{display_name: "{name}"}}
  model:
    primary: {{provider: ollama, model: "llama3.1:8b"}}
  orchestration: {{pattern: react}}
"""
