"""The astromesh-node image under the restricted security context, on its own.

The pod spec is the one a hardened tenant namespace gives its node: uid 65532, no privilege
escalation, every capability dropped, read-only root with emptyDirs on /tmp and the config
dir, no ServiceAccount token. Independent of what the manager renders, so the image is known
good before the manager relies on it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from .cluster import AGENT_YAML, SYSTEM_NS, Cluster, eventually, pod_ready


def node_image(cluster: Cluster) -> str:
    deploy = cluster.get("deployment", "-n", SYSTEM_NS, "nexus-controller-manager")
    args: list[str] = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    return next(a.split("=", 1)[1] for a in args if a.startswith("--node-image="))


def restricted_pod(namespace: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node", "namespace": namespace},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "astromesh-node",
                "image": image,
                "imagePullPolicy": "Never",
                "env": [{"name": "ASTROMESH_ROLE", "value": "full"}],
                "readinessProbe": {
                    "httpGet": {"path": "/v1/health", "port": 8000}, "periodSeconds": 1,
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "config", "mountPath": "/var/lib/astromesh"},
                ],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "config", "emptyDir": {}}],
        },
    }  # fmt: skip


@pytest.fixture
async def restricted_node(cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
    ns = f"e2e-node-image-{secrets.token_hex(3)}"
    await cluster.akubectl("create", "namespace", ns)
    try:
        image = await asyncio.to_thread(node_image, cluster)
        manifest = json.dumps(restricted_pod(ns, image))
        await cluster.akubectl("apply", "-f", "-", stdin=manifest)

        async def ready() -> dict[str, Any] | None:
            pod = await cluster.aget("pod", "-n", ns, "node")
            return pod if pod_ready(pod) else None

        yield await eventually(ready, 120, "the restricted node pod Ready")
    finally:
        await cluster.akubectl("delete", "namespace", ns, "--wait=false")


async def test_node_image_serves_and_persists_agents_read_only(
    cluster: Cluster, restricted_node: dict[str, Any]
) -> None:
    pod = restricted_node
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    uid = await cluster.akubectl("exec", "-n", ns, name, "--", "id", "-u")
    assert uid.strip() == "65532"
    base = f"http://{pod['status']['podIP']}:8000"
    spec = yaml.safe_load(AGENT_YAML.format(name="image-check"))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/agents", json=spec) as r:
            assert r.status < 300, await r.text()
        async with s.post(f"{base}/v1/agents/image-check/deploy") as r:
            assert r.status < 300, await r.text()
        async with s.get(f"{base}/v1/agents") as r:
            names = {a["name"] for a in (await r.json())["agents"]}
    assert "image-check" in names
    # Created agents are kept in the config dir (an emptyDir), not on the read-only root.
    files = await cluster.akubectl("exec", "-n", ns, name, "--", "ls", "-R", "/var/lib/astromesh")
    assert "image-check" in files, files
