"""The admission webhooks, as the API server on the node calls them: kubectl gets their answers."""

from __future__ import annotations

import json
import secrets

import pytest

from .cluster import Api, Cluster


def agent(name: str, namespace: str, inner: str, provider: str) -> str:
    return json.dumps({
        "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"agentSpec": {
            "apiVersion": "astromesh/v1", "kind": "Agent",
            "metadata": {"name": inner, "version": "1.0.0"},
            "spec": {
                "identity": {"display_name": "E2E webhook"},
                "model": {"primary": {"provider": provider, "model": "llama3.1:8b"}},
                "orchestration": {"pattern": "react"},
            },
        }},
    })  # fmt: skip


async def test_kubectl_gets_the_webhooks_messages_for_a_bad_agent(
    cluster: Cluster, api: Api
) -> None:
    auth = await api.user(cluster.dev["NEXUS_DEV_EMAIL"], cluster.dev["NEXUS_DEV_PASSWORD"])
    _, body = await api.call("GET", f"/api/v1/tenants/{cluster.dev['NEXUS_DEV_TENANT']}",
                             200, headers=auth)  # fmt: skip
    namespace = body["namespace"]
    name = f"e2e-bad-{secrets.token_hex(3)}"
    with pytest.raises(AssertionError) as refused:
        await cluster.akubectl(
            "apply", "-f", "-", stdin=agent(name, namespace, "another-name", "no-such-provider")
        )
    message = str(refused.value)
    assert f'The NexusAgent "{name}" is invalid' in message, message
    assert "spec.model.primary.provider must be one of" in message, message
    assert f"metadata.name must be '{name}'" in message, message
    # Refused, not stored.
    got = await cluster.akubectl(
        "get", "nexusagent", "-n", namespace, name, "--ignore-not-found", "-o", "name"
    )
    assert got.strip() == ""
    # A good one goes through the same webhooks (defaulting and validation).
    good = f"e2e-good-{secrets.token_hex(3)}"
    await cluster.akubectl("apply", "-f", "-", stdin=agent(good, namespace, good, "ollama"))
    await cluster.akubectl("delete", "nexusagent", "-n", namespace, good, "--wait=false")
