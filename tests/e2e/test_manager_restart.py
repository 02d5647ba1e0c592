"""The manager pod replaced: the new one serves the same users, tenants and keys (the PVC)."""

from __future__ import annotations

import secrets

from .cluster import SYSTEM_NS, Api, Cluster, eventually, pod_ready
from .test_deploy import forbidden_lines


async def test_replacement_manager_keeps_users_tenants_and_keys(cluster: Cluster, api: Api) -> None:
    email = f"e2e-pvc-{secrets.token_hex(4)}@example.com"
    auth = await api.user(email)
    tenant = await api.tenant(auth, "E2E durable")
    key = await api.key(auth, tenant["id"])
    [old] = [p for p in await cluster.manager_pods() if pod_ready(p)]
    name = old["metadata"]["name"]
    # Its log is lost with it: check it for authorization failures first.
    log = await cluster.akubectl("logs", "-n", SYSTEM_NS, name)
    assert forbidden_lines(log) == []
    await cluster.akubectl("delete", "pod", "-n", SYSTEM_NS, name, "--wait=false")

    async def replaced() -> bool:
        pods = [p for p in await cluster.manager_pods() if pod_ready(p)]
        if len(pods) != 1 or pods[0]["metadata"]["name"] == name:
            return False
        status, _ = await api.call("GET", "/readyz")
        return status == 200

    await eventually(replaced, 240, "a Ready replacement manager pod serving the API")
    again = await api.user(email)  # logs in with the same password
    status, listed = await api.call("GET", "/api/v1/tenants", 200, headers=again)
    assert tenant["id"] in {t["id"] for t in listed}
    status, _ = await api.call("GET", "/api/v1/agents", headers={"X-API-Key": key})
    assert status == 200
    # The seeded dev account survived too.
    dev_key = cluster.dev["NEXUS_DEV_API_KEY"]
    status, _ = await api.call("GET", "/api/v1/agents", headers={"X-API-Key": dev_key})
    assert status == 200
    await api.call("DELETE", f"/api/v1/tenants/{tenant['id']}", 200, headers=again)
