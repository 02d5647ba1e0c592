"""`make dev` smoke test: ready line, the seeded tenant's own node, two tenants with same-named
agents on two node processes, the walkthrough, Ctrl-C leaves nothing behind, state reused."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s_client

from nexus.app import kube_configuration
from nexus.runtime.client import Client
from nexus.runtime.envtest import free_port
from nexus.runtime.resource import PODS
from nexus.webhooks.setup import AGENT_VALIDATE_PATH

from ..conftest import ROOT
from ..support.kubectl import run_kubectl
from ..support.localnode import random_range
from ..support.tenants import Account, agent_spec, description, node_agent, node_agents

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SHARED = "shared-name"
NODE_LINE = re.compile(r"node\s+(astromesh-node-\S+) at (http://(127\.\d+\.\d+\.\d+):8000)")


def leftovers(data: Path) -> list[str]:
    """Processes started from ``data``: named in their command line, or working in it (the
    node processes run in their pod's folder)."""
    found = []
    root = str(data.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(data) in cmd or cwd == root or cwd.startswith(root + "/"):
            found.append(f"{proc.name}: {cmd[:200]} (in {cwd})")
    return found


async def start_dev(
    data: Path, ports: dict[str, int], node_range: str
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus.dev", f"--data={data}",
        f"--api-port={ports['api']}", f"--node-range={node_range}",
        f"--probe-port={ports['probe']}", f"--metrics-port={ports['metrics']}",
        f"--webhook-port={ports['webhook']}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
        env={**os.environ},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    async with asyncio.timeout(240):
        while "Press Ctrl-C to stop." not in text:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"nexus dev exited early:\n{text}")
            text += line.decode()
    return proc, text


async def stop_dev(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        assert proc.stdout is not None
        await proc.stdout.read()
        return await proc.wait()


async def node_url_of(kubeconfig: str, namespace: str) -> str:
    """The node of a tenant as a user finds it: its Ready pod's address (kubectl get pods)."""
    cfg = await kube_configuration(kubeconfig)
    async with k8s_client.ApiClient(cfg) as api:
        kube = Client(api)
        try:
            items, _ = await kube.list_all(PODS, namespace)
        finally:
            await kube.close()
    ready = [
        p
        for p in items
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or ()
        )
    ]
    assert len(ready) == 1, items
    return f"http://{ready[0]['status']['podIP']}:8000"


async def two_tenants_keep_apart(base: str, dev_key: str, dev_node: str, kubeconfig: str) -> None:
    """The dev tenant and a newly registered user's tenant each deploy ``shared-name``: two
    agents on two node processes, independent through create, update and delete."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        dev = Account(http, base, "dev", key=dev_key)
        other = await Account.open(http, base, "Second User")
        other_ns = await other.wait_ready()
        other_node = await node_url_of(kubeconfig, other_ns)
        assert other_node != dev_node

        await dev.create_agent(agent_spec(SHARED, description="dev v1"))
        await other.create_agent(agent_spec(SHARED, description="other v1"))
        await asyncio.gather(dev.wait_agent(SHARED), other.wait_agent(SHARED))
        assert description(await node_agent(dev_node, SHARED)) == "dev v1"
        assert description(await node_agent(other_node, SHARED)) == "other v1"

        await dev.update_agent(agent_spec(SHARED, description="dev v2"))
        for _ in range(120):
            if description(await node_agent(dev_node, SHARED)) == "dev v2":
                break
            await asyncio.sleep(0.5)
        assert description(await node_agent(dev_node, SHARED)) == "dev v2"
        assert description(await node_agent(other_node, SHARED)) == "other v1"

        await dev.delete_agent(SHARED)
        for _ in range(120):
            if await node_agent(dev_node, SHARED) is None:
                break
            await asyncio.sleep(0.5)
        assert await node_agent(dev_node, SHARED) is None
        await asyncio.sleep(1.0)
        assert await node_agents(other_node) == {SHARED: "deployed"}
        assert description(await node_agent(other_node, SHARED)) == "other v1"
        await other.delete_agent(SHARED)
        await other.delete_tenant()


THREE_ERRORS = {
    "apiVersion": "astromesh/v1",
    "kind": "Agent",
    "metadata": {"name": "broken-bot", "version": "1.0.0"},
    "spec": {"model": {"primary": {"provider": "nope"}}, "orchestration": {"pattern": "wrong"}},
}


async def kubectl_gets_the_api_answers(
    data: Path, ports: dict[str, int], key: str, text: str
) -> None:
    """The issue's acceptance: kubectl apply of a NexusAgent with three spec errors is refused
    with all three in English; the API's 400 has the same three; the webhook is counted."""
    import yaml

    tenant_ns = re.search(r"tenant\s+t_\w+ \((tenant-\w+)\)", text)
    assert tenant_ns, text
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"http://127.0.0.1:{ports['api']}/api/v1/agents",
            json=THREE_ERRORS,
            headers={"X-API-Key": key},
        ) as r:
            assert r.status == 400
            errors = (await r.json())["errors"]
        assert len(errors) == 3, errors
        manifest = yaml.safe_dump(
            {
                "apiVersion": "nexus.astromesh.io/v1alpha1",
                "kind": "NexusAgent",
                "metadata": {"name": "broken-bot", "namespace": tenant_ns.group(1)},
                "spec": {"agentSpec": THREE_ERRORS},
            }
        )
        out = await run_kubectl(data / "cluster" / "kubeconfig", "apply", "-f", "-", stdin=manifest)
        assert out.code != 0
        for message in errors:
            assert message in out.err, (message, out.err)
        async with s.get(f"http://127.0.0.1:{ports['metrics']}/metrics") as r:
            metrics = await r.text()
    assert (
        f'controller_runtime_webhook_requests_total{{code="200",webhook="{AGENT_VALIDATE_PATH}"}}'
        in metrics
    )


async def test_make_dev_gives_each_tenant_its_own_node_and_stops_clean(tmp_path: Path) -> None:
    data = tmp_path / "nexus-dev"
    ports = {k: free_port() for k in ("api", "probe", "metrics", "webhook")}
    node_range = random_range()
    proc, text = await start_dev(data, ports, node_range)
    try:
        assert f"Nexus ready at http://localhost:{ports['api']}" in text
        assert "dev@astromesh.local / astromesh-dev-2024" in text
        key = re.search(r"API key\s+(nxk_\S+)", text)
        kubeconfig = re.search(r"kubeconfig\s+(\S+)", text)
        node = NODE_LINE.search(text)
        assert key and kubeconfig and node, text
        # The seeded tenant's own node, on an address of the range, answering.
        assert ipaddress.ip_address(node.group(3)) in ipaddress.ip_network(node_range)
        base = f"http://127.0.0.1:{ports['api']}"
        assert await node_agents(node.group(2)) == {}
        await kubectl_gets_the_api_answers(data, ports, key.group(1), text)
        await two_tenants_keep_apart(base, key.group(1), node.group(2), kubeconfig.group(1))

        walk = await asyncio.create_subprocess_exec(
            "bash", str(ROOT / "hack" / "walkthrough.sh"),
            env={**os.environ, "NEXUS_URL": base},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(walk.communicate(), 240)
        assert walk.returncode == 0, out.decode()
    finally:
        code = await stop_dev(proc)
    assert code == 0
    assert leftovers(data) == []

    # A second run reuses the data: same tenant, same key, the tenant's node runs again.
    proc2, text2 = await start_dev(data, ports, node_range)
    try:
        key2 = re.search(r"API key\s+(nxk_\S+)", text2)
        tenant = re.search(r"tenant\s+(t_\w+)", text)
        assert key2 and key2.group(1) == key.group(1)
        assert tenant and tenant.group(1) in text2
        node2 = NODE_LINE.search(text2)
        assert node2, text2
        assert await node_agents(node2.group(2)) == {}
    finally:
        assert await stop_dev(proc2) == 0
    assert leftovers(data) == []
