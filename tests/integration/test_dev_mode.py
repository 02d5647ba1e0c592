"""`make dev` smoke test: ready line, seeded key, walkthrough, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from nexus.runtime.envtest import free_port
from nexus.webhooks.setup import AGENT_VALIDATE_PATH

from ..conftest import ROOT
from ..support.kubectl import run_kubectl

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def leftovers(data: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(data) in cmd:
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


async def start_dev(data: Path, ports: dict[str, int]) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus.dev", f"--data={data}",
        f"--api-port={ports['api']}", f"--node-port={ports['node']}",
        f"--probe-port={ports['probe']}", f"--metrics-port={ports['metrics']}",
        f"--webhook-port={ports['webhook']}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
        env={**os.environ},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    async with asyncio.timeout(180):
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
    import aiohttp
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


async def test_make_dev_runs_the_walkthrough_and_stops_clean(tmp_path: Path) -> None:
    data = tmp_path / "nexus-dev"
    ports = {k: free_port() for k in ("api", "node", "probe", "metrics", "webhook")}
    proc, text = await start_dev(data, ports)
    try:
        assert f"Nexus ready at http://localhost:{ports['api']}" in text
        assert "dev@astromesh.local / astromesh-dev-2024" in text
        key = re.search(r"API key\s+(nxk_\S+)", text)
        assert key, text
        await kubectl_gets_the_api_answers(data, ports, key.group(1), text)
        walk = await asyncio.create_subprocess_exec(
            "bash", str(ROOT / "hack" / "walkthrough.sh"),
            env={**os.environ, "NEXUS_URL": f"http://127.0.0.1:{ports['api']}"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(walk.communicate(), 180)
        assert walk.returncode == 0, out.decode()
    finally:
        code = await stop_dev(proc)
    assert code == 0
    assert leftovers(data) == []

    # A second run reuses the data: same tenant, same key.
    proc2, text2 = await start_dev(data, ports)
    try:
        key2 = re.search(r"API key\s+(nxk_\S+)", text2)
        tenant = re.search(r"tenant\s+(t_\w+)", text)
        assert key2 and key2.group(1) == key.group(1)
        assert tenant and tenant.group(1) in text2
    finally:
        assert await stop_dev(proc2) == 0
    assert leftovers(data) == []
