"""Nexus's admission webhooks on the real control plane, through a real `nexus manager`.

The configurations of config/webhook are installed as `make dev` installs them (by URL, with
a self-signed CA); kubectl's answers are compared with the REST API's for the same spec, on
the same manager, against a real astromesh node.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES
from nexus.runtime.webhook import WebhookInstallOptions
from nexus.webhooks.setup import AGENT_VALIDATE_PATH

from ..conftest import ROOT
from ..support.kubectl import Result, run_kubectl
from ..support.manager import ManagerProcess
from ..support.node import AstromeshNode
from .test_nexus_controllers import phase, wait_for, wait_gone

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SYSTEM_NS = "nexus-system"
GOOD_SPEC: dict[str, Any] = {
    "apiVersion": "astromesh/v1",
    "kind": "Agent",
    "metadata": {"name": "PLACEHOLDER", "version": "1.0.0"},
    "spec": {
        "identity": {"display_name": "Bot"},
        "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
        "orchestration": {"pattern": "react"},
    },
}


def spec(name: str, **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(GOOD_SPEC))
    out["metadata"]["name"] = name
    out["spec"].update(changes)
    return out


def bad_spec(name: str) -> dict[str, Any]:
    """Three violations: an unknown provider, no model, a pattern that does not exist."""
    return spec(
        name,
        model={"primary": {"provider": "nope"}},
        orchestration={"pattern": "wrong"},
    )


def observed(obj: dict[str, Any]) -> bool:
    return bool(
        (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
    )


def agent_manifest(name: str, namespace: str, agent_spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "nexus.astromesh.io/v1alpha1",
            "kind": "NexusAgent",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"agentSpec": agent_spec},
        }
    )


def tenant_manifest(name: str, spec_: dict[str, Any], namespace: str = SYSTEM_NS) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "nexus.astromesh.io/v1alpha1",
            "kind": "NexusTenant",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec_,
        }
    )


@dataclass
class Nexus:
    """The manager under test (replaced when a test restarts it) and a tenant made by the API."""

    proc: ManagerProcess
    env: Environment
    install: WebhookInstallOptions
    token: str = ""
    tenant_id: str = ""
    tenant_ns: str = ""
    key: str = ""

    @property
    def url(self) -> str:
        return self.proc.url

    async def apply(self, manifest: str) -> Result:
        return await run_kubectl(self.env, "apply", "-f", "-", stdin=manifest)

    async def api(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        hdrs = {"X-API-Key": self.key} if headers is None else headers
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.url + path, json=body, headers=hdrs) as r,
        ):
            data = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, data, dict(r.headers)


def manager_for(
    env: Environment, install: WebhookInstallOptions, workdir: Path, node: AstromeshNode
) -> ManagerProcess:
    return ManagerProcess(
        env.kubeconfig_path,
        workdir,
        node_url=node.url,
        jwt_secret="webhook-tests-" + "x" * 40,
        extra=[
            f"--webhook-bind-address={install.bind_address}",
            f"--webhook-cert-dir={install.local_serving_cert_dir}",
        ],
    )


async def wait_webhook_ready(proc: ManagerProcess) -> None:
    async with aiohttp.ClientSession() as s, asyncio.timeout(30):
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{proc.probe_port}/readyz/webhook") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def wh_node() -> AsyncIterator[AstromeshNode]:
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


@pytest.fixture(scope="module")
async def nexus(
    envtest: Environment,
    kube: Client,
    wh_node: AstromeshNode,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Nexus]:
    if await kube.get_or_none(NAMESPACES, SYSTEM_NS) is None:
        await kube.create(NAMESPACES, {"metadata": {"name": SYSTEM_NS}})
    workdir = tmp_path_factory.mktemp("webhooks")
    install = WebhookInstallOptions(
        paths=[ROOT / "config" / "webhook"], local_serving_cert_dir=workdir / "certs"
    )
    await envtest.install_webhooks(install)
    n = Nexus(manager_for(envtest, install, workdir, wh_node), envtest, install)
    try:
        await n.proc.start()
        await wait_webhook_ready(n.proc)
        async with aiohttp.ClientSession() as s:
            reg = await (
                await s.post(
                    f"{n.url}/auth/register",
                    json={
                        "email": f"wh-{secrets.token_hex(4)}@example.com",
                        "password": secrets.token_urlsafe(16),
                        "displayName": "Webhooks",
                    },
                )
            ).json()
            n.token = reg["accessToken"]
            auth = {"Authorization": f"Bearer {n.token}"}
            t = await (
                await s.post(f"{n.url}/api/v1/tenants", json={"displayName": "WH"}, headers=auth)
            ).json()
            n.tenant_id, n.tenant_ns = t["id"], t["crName"]
            k = await (
                await s.post(f"{n.url}/api/v1/tenants/{n.tenant_id}/keys", json={}, headers=auth)
            ).json()
            n.key = k["rawKey"]
        await wait_for(kube, TENANTS, n.tenant_ns, SYSTEM_NS, phase("Ready"), timeout=60)
        yield n
    finally:
        code = await n.proc.stop()
        await envtest.uninstall_webhooks(install)
        assert code == 0, n.proc.log_tail()
        assert "webhook.validator_failed" not in n.proc.log_tail(10**9)


async def test_kubectl_refuses_a_bad_agent_with_the_api_messages(
    nexus: Nexus, kube: Client
) -> None:
    status, body, _ = await nexus.api("POST", "/api/v1/agents", bad_spec("bad-bot"))
    assert status == 400
    errors = body["errors"]
    assert len(errors) == 3, errors
    assert any("spec.model.primary.provider must be one of" in e for e in errors)
    assert "spec.model.primary.model is required" in errors
    assert any("spec.orchestration.pattern must be one of" in e for e in errors)

    out = await nexus.apply(agent_manifest("bad-bot", nexus.tenant_ns, bad_spec("bad-bot")))
    assert out.code != 0
    assert 'The NexusAgent "bad-bot" is invalid' in out.err, out.err
    for message in errors:
        assert message in out.err, (message, out.err)
    assert await kube.get_or_none(AGENTS, "bad-bot", nexus.tenant_ns) is None

    # The manager counts admission requests with controller-runtime's metric.
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{nexus.proc.metrics_port}/metrics") as r,
    ):
        text = await r.text()
    counted = re.search(
        r'controller_runtime_webhook_requests_total\{code="200",webhook="'
        + re.escape(AGENT_VALIDATE_PATH)
        + r'"\} (\S+)',
        text,
    )
    assert counted and float(counted.group(1)) >= 1, text[-3000:]


async def test_kubectl_made_tenants_get_the_api_defaults_and_good_agents_run(
    nexus: Nexus, kube: Client
) -> None:
    name = f"wh-{uuid.uuid4().hex[:6]}"
    out = await nexus.apply(tenant_manifest(name, {}))
    assert out.code == 0, out.err
    made = await kube.get(TENANTS, name, SYSTEM_NS)
    api_made = await kube.get(TENANTS, nexus.tenant_ns, SYSTEM_NS)
    assert made["spec"]["resourceQuota"] == api_made["spec"]["resourceQuota"]
    assert made["spec"]["resourceQuota"] == {"maxAgents": 10, "cpu": "4", "memory": "8Gi"}
    assert made["spec"]["nodeProfile"] == api_made["spec"]["nodeProfile"] == "full"
    assert made["spec"]["displayName"] == name
    assert set(made["spec"]) == set(api_made["spec"])
    await wait_for(kube, TENANTS, name, SYSTEM_NS, phase("Ready"), timeout=60)

    good = await nexus.apply(agent_manifest("good-bot", name, spec("good-bot")))
    assert good.code == 0, good.err
    running = await wait_for(kube, AGENTS, "good-bot", name, phase("Running"), timeout=60)
    assert running["status"]["nodeAck"] is True

    # A tenant that cannot become Ready (its namespace belongs to someone else): the agent is
    # admitted with a warning, and waits.
    taken = f"wh-taken-{uuid.uuid4().hex[:6]}"
    await kube.create(NAMESPACES, {"metadata": {"name": taken}})
    assert (await nexus.apply(tenant_manifest(taken, {}))).code == 0
    await wait_for(kube, TENANTS, taken, SYSTEM_NS, phase("Error"), timeout=30)
    waiting = await nexus.apply(agent_manifest("waiting-bot", taken, spec("waiting-bot")))
    assert waiting.code == 0, waiting.err
    assert f"Warning: tenant '{taken}' is not Ready yet (phase Error)" in waiting.err
    await kube.delete(AGENTS, "waiting-bot", taken)
    await kube.delete(TENANTS, taken, SYSTEM_NS)
    await kube.delete(TENANTS, name, SYSTEM_NS)
    await wait_gone(kube, TENANTS, taken, SYSTEM_NS)
    await kube.delete(NAMESPACES, taken)


async def test_an_update_that_breaks_the_spec_is_refused(nexus: Nexus, kube: Client) -> None:
    ns = nexus.tenant_ns
    assert (await nexus.apply(agent_manifest("upd-bot", ns, spec("upd-bot")))).code == 0
    before = await kube.get(AGENTS, "upd-bot", ns)
    broken = spec("upd-bot", model={"primary": {"provider": "nope", "model": "m"}})
    out = await nexus.apply(agent_manifest("upd-bot", ns, broken))
    assert out.code != 0
    status, body, _ = await nexus.api("PUT", "/api/v1/agents/upd-bot", broken)
    assert status == 400
    assert body["errors"] and all(e in out.err for e in body["errors"]), (body, out.err)
    # The name rule: the spec's name must be the object's.
    renamed = await nexus.apply(agent_manifest("upd-bot", ns, spec("other-name")))
    assert "metadata.name must be 'upd-bot' (the name of the NexusAgent)" in renamed.err
    after = await kube.get(AGENTS, "upd-bot", ns)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["agentSpec"] == before["spec"]["agentSpec"]
    # Metadata-only writes are not held to the spec rules.
    labelled = await run_kubectl(nexus.env, "label", "na", "upd-bot", "-n", ns, "team=a")
    assert labelled.code == 0, labelled.err


async def test_tenant_and_quota_rules(nexus: Nexus, kube: Client, namespace: str) -> None:
    reserved = await nexus.apply(tenant_manifest("kube-evil", {}))
    assert "tenant name 'kube-evil' is a system namespace" in reserved.err
    elsewhere = await nexus.apply(tenant_manifest("wh-elsewhere", {}, namespace="default"))
    assert "NexusTenants live in namespace 'nexus-system'" in elsewhere.err
    zero = await nexus.apply(tenant_manifest("wh-zero", {"resourceQuota": {"cpu": "0"}}))
    assert "spec.resourceQuota.cpu must be greater than zero" in zero.err
    for name in ("kube-evil", "wh-zero"):
        assert await kube.get_or_none(TENANTS, name, SYSTEM_NS) is None

    profile = await run_kubectl(
        nexus.env, "patch", "nt", nexus.tenant_ns, "-n", SYSTEM_NS, "--type=merge",
        "-p", '{"spec":{"nodeProfile":"gpu"}}',
    )  # fmt: skip
    assert profile.code != 0
    assert "spec.nodeProfile is immutable (it is 'full')" in profile.err

    orphan = await nexus.apply(agent_manifest("orphan", namespace, spec("orphan")))
    assert f"namespace '{namespace}' does not belong to a tenant" in orphan.err
    assert "Forbidden" in orphan.err

    # maxAgents, on an API-made tenant: the API and kubectl refuse with the same message.
    alive = len((await kube.list(AGENTS, nexus.tenant_ns))["items"])
    lowered = await run_kubectl(
        nexus.env, "patch", "nt", nexus.tenant_ns, "-n", SYSTEM_NS, "--type=merge",
        "-p", json.dumps({"spec": {"resourceQuota": {"maxAgents": alive}}}),
    )  # fmt: skip
    assert lowered.code == 0, lowered.err
    # The API's own check reads the tenant from the manager's cache; once the reconciler has
    # seen this generation, so has the cache.
    await wait_for(kube, TENANTS, nexus.tenant_ns, SYSTEM_NS, observed, timeout=30)
    status, body, _ = await nexus.api("POST", "/api/v1/agents", spec("one-too-many"))
    assert (status, body) == (403, {"error": f"exceeded quota: maxAgents={alive}"})
    out = await nexus.apply(agent_manifest("one-too-many", nexus.tenant_ns, spec("one-too-many")))
    assert f"denied the request: exceeded quota: maxAgents={alive}" in out.err, out.err
    warned = await run_kubectl(
        nexus.env, "patch", "nt", nexus.tenant_ns, "-n", SYSTEM_NS, "--type=merge",
        "-p", json.dumps({"spec": {"resourceQuota": {"maxAgents": max(alive - 1, 0)}}}),
    )  # fmt: skip
    if alive:
        assert f"is below the tenant's {alive} agents" in warned.err, warned.err
    restored = await run_kubectl(
        nexus.env, "patch", "nt", nexus.tenant_ns, "-n", SYSTEM_NS, "--type=merge",
        "-p", '{"spec":{"resourceQuota":{"maxAgents":10}}}',
    )  # fmt: skip
    assert restored.code == 0, restored.err


async def test_glyph_follows_the_real_node(nexus: Nexus, kube: Client) -> None:
    ns = nexus.tenant_ns
    # The node (without the glyph extra) runs a program-less glyph agent as react.
    status, body, _ = await nexus.api(
        "POST", "/api/v1/agents", spec("glyph-bot", orchestration={"pattern": "glyph"})
    )
    assert status == 201, body
    await wait_for(kube, AGENTS, "glyph-bot", ns, phase("Running"), timeout=60)

    # A program with any other pattern is a deploy error on the node: refused up front, by
    # both paths, with one message.
    mixed = spec("mixed-bot", program="answer = 42")
    status, body, _ = await nexus.api("POST", "/api/v1/agents", mixed)
    assert status == 400
    assert body["errors"] == ['spec.program needs spec.orchestration.pattern "glyph"']
    out = await nexus.apply(agent_manifest("mixed-bot", ns, mixed))
    assert body["errors"][0] in out.err, out.err

    # A program with glyph is valid; a node without the extra refuses to deploy it, and says
    # so in the agent's status.
    programmed = spec("prog-bot", orchestration={"pattern": "glyph"}, program="answer = 42")
    status, body, _ = await nexus.api("POST", "/api/v1/agents", programmed)
    assert status == 201, body
    failed = await wait_for(kube, AGENTS, "prog-bot", ns, phase("Failed"), timeout=60)
    assert "glyph" in json.dumps(failed["status"])
    for name in ("glyph-bot", "prog-bot"):
        await nexus.api("DELETE", f"/api/v1/agents/{name}")


async def test_a_dead_webhook_fails_closed_with_a_clear_error_and_loses_nothing(
    nexus: Nexus, kube: Client, wh_node: AstromeshNode
) -> None:
    """Last in the module: it stops and restarts the manager."""
    ns = nexus.tenant_ns
    assert (await nexus.apply(agent_manifest("kept-bot", ns, spec("kept-bot")))).code == 0
    await wait_for(kube, AGENTS, "kept-bot", ns, phase("Running"), timeout=60)
    assert await nexus.proc.stop() == 0
    stored = {
        a["metadata"]["name"]: a["metadata"]["resourceVersion"]
        for a in (await kube.list(AGENTS, ns))["items"]
    }

    out = await nexus.apply(agent_manifest("while-dead", ns, spec("while-dead")))
    assert out.code != 0
    assert 'failed calling webhook "vnexusagent.nexus.astromesh.io"' in out.err, out.err
    assert "connection refused" in out.err
    assert await kube.get_or_none(AGENTS, "while-dead", ns) is None
    now = {
        a["metadata"]["name"]: a["metadata"]["resourceVersion"]
        for a in (await kube.list(AGENTS, ns))["items"]
    }
    assert now == stored

    # The REST API, served by a replica whose webhook is not the one registered, answers 503
    # with Retry-After (not a 500) while the webhook is down.
    api_only = ManagerProcess(
        nexus.env.kubeconfig_path,
        nexus.proc.workdir,
        node_url=wh_node.url,
        jwt_secret=nexus.proc.jwt_secret,
    )
    await api_only.start()
    try:
        status, body, headers = await nexus_api(api_only.url, nexus.key, spec("while-dead"))
        assert status == 503, body
        assert headers.get("Retry-After") == "2"
    finally:
        assert await api_only.stop() == 0

    restarted = manager_for(nexus.env, nexus.install, nexus.proc.workdir, wh_node)
    nexus.proc = restarted
    await restarted.start()
    await wait_webhook_ready(restarted)
    deadline = time.monotonic() + 10
    while True:
        out = await nexus.apply(agent_manifest("while-dead", ns, spec("while-dead")))
        if out.code == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert out.code == 0, out.err
    kept = await wait_for(kube, AGENTS, "kept-bot", ns, phase("Running"))
    assert kept["spec"]["agentSpec"] == spec("kept-bot")


async def nexus_api(url: str, key: str, body: Any) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/api/v1/agents", json=body, headers={"X-API-Key": key}) as r,
    ):
        return r.status, await r.json(), dict(r.headers)
