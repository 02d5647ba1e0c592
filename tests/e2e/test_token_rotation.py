"""A rotated ServiceAccount token: the running manager picks up the new one without a restart.

As a kubelet rotates a token: the token file of the running pod is swapped for a second valid
token of the same ServiceAccount (written into the pod's volume on the node the way the kubelet
writes it: a new timestamped folder, then an atomic rename of ``..data``) at the moment the old
token is revoked (its Secret is made to hold the new one, which also keeps the kubelet from
writing the old one back). No grace period: the manager must use the new file at once. Runs
last (the file name): the manager then lives on the second Secret's token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .cluster import STATE, SYSTEM_NS, Api, Cluster, eventually, pod_ready

SA = "nexus-controller-manager"
# The API server's refusal of a revoked token, as the client library or the manager logs it.
UNAUTHORIZED = re.compile(r"\b401\b|unauthorized", re.IGNORECASE)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def api_server_status(cluster: Cluster, token: str) -> int:
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    ctx = ssl.create_default_context(cafile=cfg["certificate-authority"])
    url = cfg["server"] + f"/apis/nexus.astromesh.io/v1alpha1/namespaces/{SYSTEM_NS}/nexustenants"
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=ctx) as r,
    ):
        return r.status


def swap_token_file(volume: Path, token: str) -> None:
    """Replace the token in a secret volume as the kubelet's atomic writer does."""
    current = volume / os.readlink(volume / "..data")
    fresh = volume / f"..nexus_e2e_{secrets.token_hex(4)}"
    shutil.copytree(current, fresh, symlinks=True)
    (fresh / "token").write_text(token)
    link = volume / "..data_tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(fresh.name)
    os.replace(link, volume / "..data")


async def test_manager_picks_up_a_rotated_token_without_a_restart(
    cluster: Cluster, api: Api
) -> None:
    [pod] = [p for p in await cluster.manager_pods() if pod_ready(p)]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    volume_name, mounted = next(
        (v["name"], v["secret"]["secretName"])
        for v in pod["spec"]["volumes"]
        if v.get("secret", {}).get("secretName", "").startswith(f"{SA}-token-")
    )
    secret = await cluster.aget("secret", "-n", SYSTEM_NS, mounted)
    old = base64.b64decode(secret["data"]["token"]).decode()
    # A second token of the same ServiceAccount, minted by the tokens controller.
    second = f"{SA}-e2e-rotated-{secrets.token_hex(3)}"
    await cluster.akubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": second, "namespace": SYSTEM_NS,
                     "annotations": {"kubernetes.io/service-account.name": SA}},
    }))  # fmt: skip

    async def minted() -> str | None:
        data = (await cluster.aget("secret", "-n", SYSTEM_NS, second)).get("data") or {}
        return data.get("token")

    new_b64 = await eventually(minted, 60, "the second token minted")
    new = base64.b64decode(new_b64).decode()
    assert await api_server_status(cluster, new) == 200

    volume = (
        STATE / "kubelet" / "pods" / pod["metadata"]["uid"] / "volumes"
        / "kubernetes.io~secret" / volume_name
    )  # fmt: skip
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Revoke the old token (a Secret token is valid only while its Secret holds it) and give
    # the pod the new one, as a rotation does: the mounted Secret now holds the new token, so
    # the kubelet's resync of the volume writes the same file, never the old token back.
    await cluster.akubectl(
        "patch", "secret", "-n", SYSTEM_NS, mounted, "-p", json.dumps({"data": {"token": new_b64}})
    )
    minted_for = jwt_claims(old)["kubernetes.io/serviceaccount/secret.name"]
    if minted_for != mounted:  # an earlier rotation left the pod on another Secret's token
        await cluster.akubectl("delete", "secret", "-n", SYSTEM_NS, minted_for)
    await asyncio.sleep(1)  # the kubelet watches Secrets: let it see the new content first
    await asyncio.to_thread(swap_token_file, volume, new)
    seen = await cluster.akubectl(
        "exec", "-n", SYSTEM_NS, pod["metadata"]["name"], "--",
        "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token",
    )  # fmt: skip
    assert seen.strip() == new

    async def revoked() -> bool:
        return await api_server_status(cluster, old) == 401

    await eventually(revoked, 60, "the old token revoked (the API server caches Secrets)")
    # The same process keeps working: its Lease renewals, and a tenant through the API.
    await asyncio.sleep(15)  # longer than the Lease's renew deadline
    [now] = await cluster.manager_pods()
    assert now["status"]["containerStatuses"][0]["restartCount"] == restarts, (
        "the manager exited after its old token was revoked: it did not pick up the new token"
    )
    auth = await api.user(f"e2e-rot-{secrets.token_hex(4)}@example.com")
    status, tenant = await api.call(
        "POST", "/api/v1/tenants", headers=auth,
        json={"displayName": "E2E rotated", "nodeProfile": "full"},
    )  # fmt: skip
    try:
        assert status == 201, tenant
        await api.wait_tenant_ready(auth, tenant["id"], timeout=120)
    finally:
        if status == 201:
            await api.call("DELETE", f"/api/v1/tenants/{tenant['id']}", headers=auth)
    [after] = await cluster.manager_pods()
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == restarts, "it restarted"
    # Not one request with the revoked token once the new file is there: it was used from the
    # next request on. (This test revokes the old token a moment before it swaps the file, the
    # reverse of a real rotation, so a request in that moment may be refused; one after the
    # switch may not.)
    log = await cluster.akubectl(
        "logs", "-n", SYSTEM_NS, pod["metadata"]["name"], "-c", "manager", f"--since-time={since}"
    )
    lines = log.splitlines()
    switched = next((i for i, line in enumerate(lines) if "tokenfile.rotated" in line), None)
    assert switched is not None, log[-2000:]
    unauthorized = [line for line in lines[switched:] if UNAUTHORIZED.search(line)]
    assert not unauthorized, unauthorized[:5]
