"""config/: kustomize renders, the server accepts every object, and RBAC is sufficient.

The manager runs here under the rendered ClusterRole (impersonating its ServiceAccount), not as
cluster admin, through the whole tenant and agent lifecycle with kubectl-applied samples.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s_client
from prometheus_client import REGISTRY

from nexus.app import build_manager
from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import (
    LIMIT_RANGES,
    NAMESPACES,
    NETWORK_POLICIES,
    RESOURCE_QUOTAS,
    SECRETS,
    SERVICE_ACCOUNTS,
)
from nexus.settings import ManagerSettings

from ..conftest import ROOT
from ..support.node import AstromeshNode
from .test_nexus_controllers import phase, wait_for, wait_gone

pytestmark = pytest.mark.cluster

SA_USER = "system:serviceaccount:nexus-system:nexus-controller-manager"


def kubectl_path() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "setup-envtest.sh")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    path = Path(out.stdout.strip()) / "kubectl"
    assert path.is_file(), "hack/setup-envtest.sh must provide kubectl"
    return str(path)


async def kubectl(env: Environment, *args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        kubectl_path(), f"--kubeconfig={env.kubeconfig_path}", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await proc.communicate(stdin.encode() if stdin else None)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


def render(folder: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl_path(), "kustomize", str(ROOT / "config" / folder)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomize_renders_the_whole_install() -> None:
    docs = render("default")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
            "CustomResourceDefinition", "Deployment", "MutatingWebhookConfiguration",
            "Namespace", "PersistentVolumeClaim", "Role", "RoleBinding", "Service", "Service",
            "Service", "ServiceAccount", "ValidatingWebhookConfiguration",
        ]
    )  # fmt: skip
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["metadata"]["name"] == "nexus-controller-manager"
    assert dep["metadata"]["namespace"] == "nexus-system"
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    assert sorted(p["containerPort"] for p in c["ports"]) == [8080, 8081, 9090, 9443]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    jwt = next(e for e in c["env"] if e["name"] == "NEXUS_JWT_SECRET")
    assert jwt["valueFrom"]["secretKeyRef"]["name"] == "nexus-jwt"
    assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
    assert "--leader-elect" in c["args"]
    _check_webhook_wiring(docs, pod, c)
    samples = render("samples")
    assert {d["kind"] for d in samples} == {"NexusTenant", "NexusAgent"}


def _check_webhook_wiring(
    docs: list[dict[str, Any]], pod: dict[str, Any], c: dict[str, Any]
) -> None:
    """Service -> manager's webhook-server port; certificate Secret mounted where the manager
    reads it; every webhook path is one the manager serves; validation fails closed."""
    from nexus.runtime.webhook.server import DEFAULT_CERT_DIR
    from nexus.webhooks.setup import (
        AGENT_VALIDATE_PATH,
        MUTATING_CONFIGURATION,
        TENANT_MUTATE_PATH,
        TENANT_VALIDATE_PATH,
        VALIDATING_CONFIGURATION,
    )

    svc = next(d for d in docs if d["kind"] == "Service" and "webhook" in d["metadata"]["name"])
    assert svc["spec"]["ports"][0]["targetPort"] == "webhook-server"
    assert any(p.get("name") == "webhook-server" for p in c["ports"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == DEFAULT_CERT_DIR)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "nexus-webhook-server-cert"
    configs = {d["metadata"]["name"]: d for d in docs if d["kind"].endswith("WebhookConfiguration")}
    assert set(configs) == {VALIDATING_CONFIGURATION, MUTATING_CONFIGURATION}
    paths = set()
    for cfg in configs.values():
        for hook in cfg["webhooks"]:
            ref = hook["clientConfig"]["service"]
            assert (ref["name"], ref["namespace"]) == (svc["metadata"]["name"], "nexus-system")
            assert hook["failurePolicy"] == "Fail"
            excluded = hook["namespaceSelector"]["matchExpressions"][0]
            assert excluded["operator"] == "NotIn" and "kube-system" in excluded["values"]
            paths.add(ref["path"])
    assert paths == {AGENT_VALIDATE_PATH, TENANT_VALIDATE_PATH, TENANT_MUTATE_PATH}
    assert {d["kind"] for d in render("certmanager")} == {"Issuer", "Certificate"}


async def test_server_side_dry_run_accepts_every_object(envtest: Environment, kube: Client) -> None:
    # A dry run persists nothing, the Namespace included: the namespaced objects need it.
    if await kube.get_or_none(NAMESPACES, "nexus-system") is None:
        await kube.create(NAMESPACES, {"metadata": {"name": "nexus-system"}})
    rendered = await kubectl(envtest, "kustomize", str(ROOT / "config" / "default"))
    out = await kubectl(
        envtest, "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-",
        stdin=rendered,
    )  # fmt: skip
    assert "deployment.apps/nexus-controller-manager serverside-applied (server dry run)" in out
    assert out.count("(server dry run)") == 15


def test_kustomize_renders_the_ha_overlay() -> None:
    docs = render("ha")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
            "CustomResourceDefinition", "Deployment", "MutatingWebhookConfiguration",
            "Namespace", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service",
            "Service", "ServiceAccount", "ValidatingWebhookConfiguration",
        ]
    )  # fmt: skip
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # The URL comes from the Secret; a --database flag would override it.
    assert "--leader-elect" in c["args"]
    assert not [a for a in c["args"] if a.startswith("--database")]
    env = {e["name"]: e for e in c["env"]}
    assert env["NEXUS_DATABASE"]["valueFrom"]["secretKeyRef"] == {
        "name": "nexus-database",
        "key": "url",
    }
    assert env["NEXUS_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "nexus-jwt"
    assert not any(v.get("persistentVolumeClaim") for v in pod["volumes"])
    assert sorted(m["mountPath"] for m in c["volumeMounts"]) == [
        "/tmp",
        "/tmp/k8s-webhook-server/serving-certs",
    ]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # Both replicas serve the webhooks, wired as in config/default (the patch is a copy).
    assert sorted(p["containerPort"] for p in c["ports"]) == [8080, 8081, 9090, 9443]
    _check_webhook_wiring(docs, pod, c)
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["metadata"]["namespace"] == "nexus-system"
    assert pdb["spec"]["minAvailable"] == 1
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


async def test_server_side_dry_run_accepts_the_ha_overlay(
    envtest: Environment, kube: Client
) -> None:
    if await kube.get_or_none(NAMESPACES, "nexus-system") is None:
        await kube.create(NAMESPACES, {"metadata": {"name": "nexus-system"}})
    rendered = await kubectl(envtest, "kustomize", str(ROOT / "config" / "ha"))
    versions = await kubectl(envtest, "api-versions")
    if "policy/v1\n" not in versions + "\n":
        # The test cluster is Kubernetes 1.20, which serves PodDisruptionBudget as
        # policy/v1beta1 only (the overlay ships policy/v1, GA since 1.21); the spec is the same.
        assert "policy/v1beta1" in versions
        rendered = rendered.replace("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n")
    out = await kubectl(
        envtest, "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-",
        stdin=rendered,
    )  # fmt: skip
    assert "poddisruptionbudget.policy/nexus-controller-manager serverside-applied" in out
    assert "deployment.apps/nexus-controller-manager serverside-applied (server dry run)" in out
    assert out.count("(server dry run)") == 15


@pytest.fixture
async def rbac_node() -> AsyncIterator[AstromeshNode]:
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


def forbidden_responses() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "rest_client_requests":
            total += sum(
                s.value for s in metric.samples
                if s.name.endswith("_total") and s.labels["code"] == "403"
            )  # fmt: skip
    return total


async def test_controllers_work_under_the_rendered_cluster_role(
    envtest: Environment, kube: Client, rbac_node: AstromeshNode
) -> None:
    if await kube.get_or_none(NAMESPACES, "nexus-system") is None:
        await kube.create(NAMESPACES, {"metadata": {"name": "nexus-system"}})
    await kubectl(envtest, "apply", "-k", "config/rbac")
    cfg = await envtest.client_configuration()
    async with k8s_client.ApiClient(cfg) as api:
        # Every request of this manager is authorised as the ServiceAccount, not as admin.
        api.set_default_header("Impersonate-User", SA_USER)
        denied = Client(api)
        with pytest.raises(Exception, match="403"):
            await denied.list_all(SECRETS)
        await denied.close()
        before = forbidden_responses()
        settings = ManagerSettings(
            metrics_bind_address="0",
            health_probe_bind_address="0",
            node_endpoint=rbac_node.url,
            wait_for_node=False,  # no kubelet: the node Deployment never becomes available
            node_image="astromesh/node:rbac",
            error_requeue=1.0,
            leader_elect=True,
            leader_election_id="nexus-rbac-test",
        )
        mgr = build_manager(api, settings)
        await mgr.start()
        try:
            await asyncio.wait_for(mgr.wait_leading(), 20)
            await kubectl(envtest, "apply", "-f", "config/samples/nexus_v1alpha1_nexustenant.yaml")
            await wait_for(kube, TENANTS, "tenant-dev", "nexus-system", phase("Ready"))
            await repair_the_fence(kube, "tenant-dev")
            await kubectl(envtest, "apply", "-f", "config/samples/nexus_v1alpha1_nexusagent.yaml")
            agent = await wait_for(kube, AGENTS, "support-bot", "tenant-dev", phase("Running"))
            assert agent["status"]["nodeAck"] is True
            table = await kubectl(envtest, "get", "nexusagents", "-n", "tenant-dev")
            assert "NODEACK" in table.upper() and "Running" in table
            await kubectl(envtest, "delete", "-f", "config/samples/nexus_v1alpha1_nexusagent.yaml")
            await kubectl(
                envtest, "delete", "-f", "config/samples/nexus_v1alpha1_nexustenant.yaml",
                "--wait=false",
            )  # fmt: skip
            await wait_gone(kube, TENANTS, "tenant-dev", "nexus-system")
            await wait_gone(kube, NAMESPACES, "tenant-dev")
            assert "support-bot" not in await rbac_node.agents()
        finally:
            await mgr.stop()
        assert forbidden_responses() == before, "the manager hit 403: the ClusterRole is short"


async def repair_the_fence(kube: Client, ns: str) -> None:
    """Makes the manager create and patch each kind of the tenant's fence (under its role)."""
    await kube.delete(LIMIT_RANGES, "nexus-limits", ns)
    await kube.delete(NETWORK_POLICIES, "nexus-default-deny-ingress", ns)
    await kube.patch(RESOURCE_QUOTAS, "nexus-quota", {"spec": {"hard": {"pods": "9"}}}, ns)
    await kube.patch(NETWORK_POLICIES, "nexus-egress", {"spec": {"egress": []}}, ns)
    await kube.patch(SERVICE_ACCOUNTS, "astromesh-node", {"automountServiceAccountToken": True}, ns)
    await wait_for(kube, LIMIT_RANGES, "nexus-limits", ns, lambda o: True)
    await wait_for(kube, NETWORK_POLICIES, "nexus-default-deny-ingress", ns, lambda o: True)
    await wait_for(
        kube, RESOURCE_QUOTAS, "nexus-quota", ns, lambda o: o["spec"]["hard"]["pods"] == "1"
    )
    await wait_for(kube, NETWORK_POLICIES, "nexus-egress", ns, lambda o: o["spec"].get("egress"))
    await wait_for(
        kube, SERVICE_ACCOUNTS, "astromesh-node", ns,
        lambda o: o["automountServiceAccountToken"] is False,
    )  # fmt: skip


async def test_the_cluster_role_lets_the_manager_publish_its_ca_and_nothing_more(
    envtest: Environment, kube: Client
) -> None:
    from nexus.runtime.webhook import generate_self_signed, inject_ca_bundle
    from nexus.runtime.webhook.configurations import (
        VALIDATING,
        apply_configurations,
        delete_configurations,
        load_configurations,
    )
    from nexus.webhooks.setup import MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION

    if await kube.get_or_none(NAMESPACES, "nexus-system") is None:
        await kube.create(NAMESPACES, {"metadata": {"name": "nexus-system"}})
    await kubectl(envtest, "apply", "-k", "config/rbac")
    docs = load_configurations([ROOT / "config" / "webhook"])
    for doc in docs:
        for hook in doc["webhooks"]:
            # Installed for real, so that it must select nothing: no write of this session
            # may meet a webhook nobody serves.
            hook["objectSelector"] = {"matchLabels": {"nexus-test/never": "true"}}
    other = {**docs[-1], "metadata": {"name": "someone-elses-webhooks"}}
    await apply_configurations(kube, [*docs, other])
    ca = generate_self_signed(["127.0.0.1"]).ca_pem
    assert ca is not None
    try:
        cfg = await envtest.client_configuration()
        async with k8s_client.ApiClient(cfg) as api:
            api.set_default_header("Impersonate-User", SA_USER)
            sa = Client(api)
            try:
                changed = await inject_ca_bundle(
                    sa, ca, validating=[VALIDATING_CONFIGURATION], mutating=[MUTATING_CONFIGURATION]
                )
                assert sorted(changed) == sorted([VALIDATING_CONFIGURATION, MUTATING_CONFIGURATION])
                # Idempotent: the same CA again writes nothing.
                assert await inject_ca_bundle(sa, ca, validating=[VALIDATING_CONFIGURATION]) == []
                with pytest.raises(Exception, match="403"):
                    await inject_ca_bundle(sa, ca, validating=["someone-elses-webhooks"])
            finally:
                await sa.close()
        stored = await kube.get(VALIDATING, VALIDATING_CONFIGURATION)
        assert all(h["clientConfig"]["caBundle"] for h in stored["webhooks"])
    finally:
        await delete_configurations(kube, [*docs, other])
