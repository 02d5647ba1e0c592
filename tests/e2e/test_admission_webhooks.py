"""The admission webhooks, as the API server on the node calls them: kubectl gets their answers."""

from __future__ import annotations

import secrets

import pytest

from .cluster import Api, Cluster, agent_manifest


async def test_kubectl_gets_the_webhooks_messages_for_a_bad_agent(
    cluster: Cluster, api: Api
) -> None:
    auth = await api.user(cluster.dev["NEXUS_DEV_EMAIL"], cluster.dev["NEXUS_DEV_PASSWORD"])
    _, body = await api.call("GET", f"/api/v1/tenants/{cluster.dev['NEXUS_DEV_TENANT']}",
                             200, headers=auth)  # fmt: skip
    namespace = body["namespace"]
    name = f"e2e-bad-{secrets.token_hex(3)}"
    with pytest.raises(AssertionError) as refused:
        bad = agent_manifest(name, namespace, "another-name", "no-such-provider")
        await cluster.akubectl("apply", "-f", "-", stdin=bad)
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
    manifest = agent_manifest(good, namespace, good, "ollama")
    await cluster.akubectl("apply", "-f", "-", stdin=manifest)
    await cluster.akubectl("delete", "nexusagent", "-n", namespace, good, "--wait=false")
