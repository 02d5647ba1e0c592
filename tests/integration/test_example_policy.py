"""The example webhook-only operator (examples/configmap_policy), built only on the runtime's
webhook server, against the real control plane: refusals with every problem, defaulting,
warnings, certificate rotation on disk without a restart, a dead webhook failing closed, the
readiness check and the metrics."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes_asyncio import client as k8s_client
from prometheus_client import REGISTRY

from examples.configmap_policy.operator import (
    CONFIGURATION,
    CREATED_BY_LABEL,
    ENFORCE_LABEL,
    MUTATE_PATH,
    TIER_LABEL,
    VALIDATE_PATH,
    build,
    configurations,
)
from nexus.runtime import ApiError, Manager, ManagerOptions
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import CONFIGMAPS
from nexus.runtime.webhook import (
    MUTATING,
    VALIDATING,
    WebhookInstallOptions,
    WebhookServer,
    WebhookServerOptions,
    generate_self_signed,
    write_bundle,
)

from ..support.kubectl import run_kubectl

pytestmark = pytest.mark.cluster


@dataclass
class Policy:
    mgr: Manager
    server: WebhookServer
    install: WebhookInstallOptions

    @property
    def cert_dir(self) -> Path:
        assert self.install.local_serving_cert_dir is not None
        return Path(self.install.local_serving_cert_dir)


@pytest.fixture
async def policy(
    envtest: Environment, api_client: k8s_client.ApiClient, tmp_path: Path
) -> AsyncIterator[Policy]:
    install = WebhookInstallOptions(
        configurations=configurations(), local_serving_cert_dir=tmp_path / "certs"
    )
    await envtest.install_webhooks(install)
    mgr = Manager(
        api_client,
        ManagerOptions(metrics_bind_address="0", health_probe_bind_address="127.0.0.1:0"),
    )
    server = build(
        mgr,
        WebhookServerOptions(
            bind_address=install.bind_address,
            cert_dir=str(install.local_serving_cert_dir),
            cert_poll_interval=0.2,
        ),
        max_bytes=64,
    )
    await mgr.start()
    try:
        yield Policy(mgr, server, install)
    finally:
        await mgr.stop()
        await envtest.uninstall_webhooks(install)


def cm(name: str, ns: str, data: dict[str, str], *, enforce: bool = True) -> dict[str, object]:
    labels = {ENFORCE_LABEL: "true"} if enforce else {}
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}, "data": data}


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_refusals_list_every_problem_and_creates_are_defaulted(
    policy: Policy, kube: Client, namespace: str
) -> None:
    before = sample(
        "controller_runtime_webhook_requests_total", {"webhook": VALIDATE_PATH, "code": "200"}
    )
    with pytest.raises(ApiError) as refused:
        await kube.create(CONFIGMAPS, cm("bad", namespace, {"Mixed_Case": "x", "UPPER": "y" * 80}))
    assert refused.value.status == 422
    msg = refused.value.message
    assert 'admission webhook "vconfigmap.policy.example.io" denied the request' in msg
    assert "data key 'Mixed_Case' must be a lowercase name" in msg
    assert "data key 'UPPER' must be a lowercase name" in msg
    assert "at most 64 are allowed" in msg
    assert await kube.get_or_none(CONFIGMAPS, "bad", namespace) is None
    # Every problem is also a status cause, one each.
    causes = refused.value.body["details"]["causes"]
    assert len(causes) == 3

    created = await kube.create(CONFIGMAPS, cm("good", namespace, {"greeting": "hi"}))
    assert created["metadata"]["labels"][CREATED_BY_LABEL] == "admin"  # the envtest user

    # Not selected: the webhook never sees it (nor any ConfigMap of the control plane).
    loose = await kube.create(CONFIGMAPS, cm("loose", namespace, {"Mixed_Case": ""}, enforce=False))
    assert CREATED_BY_LABEL not in (loose["metadata"].get("labels") or {})

    await kube.patch(CONFIGMAPS, "good", {"metadata": {"labels": {TIER_LABEL: "gold"}}}, namespace)
    with pytest.raises(ApiError, match=f"label {TIER_LABEL} is immutable"):
        await kube.patch(
            CONFIGMAPS, "good", {"metadata": {"labels": {TIER_LABEL: "free"}}}, namespace
        )
    after = sample(
        "controller_runtime_webhook_requests_total", {"webhook": VALIDATE_PATH, "code": "200"}
    )
    assert after - before >= 4
    assert sample("controller_runtime_webhook_requests_in_flight", {"webhook": MUTATE_PATH}) == 0
    assert sample("controller_runtime_webhook_latency_seconds_count", {"webhook": MUTATE_PATH}) > 0


async def test_kubectl_shows_the_refusal_and_the_warnings(
    policy: Policy, envtest: Environment, namespace: str
) -> None:
    manifest = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: kubectl-made, namespace: {namespace}, labels: {{{ENFORCE_LABEL}: "true"}}}}
data: {{empty: ""}}
"""
    ok = await run_kubectl(envtest, "apply", "-f", "-", stdin=manifest)
    assert ok.code == 0, ok.err
    assert "Warning: data key 'empty' is empty" in ok.err
    bad = await run_kubectl(envtest, "apply", "-f", "-", stdin=manifest.replace("empty:", "E:"))
    assert bad.code != 0
    # kubectl prints a 422 with one line per cause.
    assert 'The ConfigMap "kubectl-made" is invalid' in bad.err, bad.err
    assert "data[E]: data key 'E' must be a lowercase name" in bad.err


def served_certificate(port: int) -> bytes:
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.PEM)


async def eventually_created(kube: Client, obj: dict[str, object]) -> dict[str, object]:
    async with asyncio.timeout(10):
        while True:
            try:
                return await kube.create(CONFIGMAPS, obj)
            except ApiError as exc:
                if "x509" not in exc.message:
                    raise
            await asyncio.sleep(0.2)


async def test_a_rotated_certificate_is_served_and_trusted_without_a_restart(
    policy: Policy, kube: Client, namespace: str
) -> None:
    assert policy.server.port is not None
    loads = policy.server.certs.loads
    first = await asyncio.to_thread(served_certificate, policy.server.port)
    rotated = generate_self_signed(["127.0.0.1", "localhost"])  # a new CA, too
    assert rotated.ca_pem is not None
    write_bundle(rotated, policy.cert_dir)
    for _ in range(150):
        if policy.server.certs.loads > loads:
            break
        await asyncio.sleep(0.1)
    assert policy.server.certs.loads == loads + 1, "the rotated pair was not loaded"
    now = await asyncio.to_thread(served_certificate, policy.server.port)
    assert now != first
    assert now == rotated.cert_pem
    # The server published the new CA itself (first, the old one kept after it).
    for res in (VALIDATING, MUTATING):
        stored = await kube.get(res, CONFIGURATION)
        for hook in stored["webhooks"]:
            bundle = base64.b64decode(hook["clientConfig"]["caBundle"])
            assert bundle.startswith(rotated.ca_pem)
            assert policy.install.ca_pem in bundle
    # The API server sees the new bundle through its own watch, within moments.
    created = await eventually_created(kube, cm("after-rotation", namespace, {"k": "v"}))
    assert created["metadata"]["labels"][CREATED_BY_LABEL] == "admin"

    # A broken pair on disk (a key that does not match) is refused; the good one keeps serving.
    other = generate_self_signed(["127.0.0.1"])
    (policy.cert_dir / "tls.key").write_bytes(other.key_pem)
    await asyncio.sleep(1.0)
    assert await asyncio.to_thread(served_certificate, policy.server.port) == rotated.cert_pem
    await kube.create(CONFIGMAPS, cm("still-served", namespace, {"k": "v"}))


async def test_a_dead_webhook_fails_closed_with_a_clear_error_and_loses_nothing(
    policy: Policy, kube: Client, namespace: str
) -> None:
    kept = await kube.create(CONFIGMAPS, cm("kept", namespace, {"k": "v"}))
    probes = policy.mgr.server_ports["probes"]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{probes}/readyz/webhook") as r:
            assert r.status == 200
        await policy.server.stop()
        async with s.get(f"http://127.0.0.1:{probes}/readyz/webhook") as r:
            assert r.status == 500
    with pytest.raises(ApiError) as refused:
        await kube.create(CONFIGMAPS, cm("while-dead", namespace, {"k": "v"}))
    assert refused.value.status == 500
    assert 'failed calling webhook "mconfigmap.policy.example.io"' in refused.value.message
    assert "connection refused" in refused.value.message
    assert await kube.get_or_none(CONFIGMAPS, "while-dead", namespace) is None
    # Objects it does not select are unaffected, and nothing stored was touched.
    await kube.create(CONFIGMAPS, cm("unselected", namespace, {"k": "v"}, enforce=False))
    still = await kube.get(CONFIGMAPS, "kept", namespace)
    assert still["metadata"]["resourceVersion"] == kept["metadata"]["resourceVersion"]
    assert still["data"] == {"k": "v"}

    await policy.server.start()
    created = await kube.create(CONFIGMAPS, cm("while-dead", namespace, {"k": "v"}))
    assert created["metadata"]["labels"][CREATED_BY_LABEL] == "admin"
