"""Nexus deployed as a user would (`make deploy` of config/default + config/local)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess

from .cluster import ROOT, SYSTEM_NS, Api, Cluster, pod_ready

# A Kubernetes authorization failure as the client library or the API server words it.
FORBIDDEN = re.compile(r"\b403\b|forbidden", re.IGNORECASE)


def forbidden_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if FORBIDDEN.search(line)]


async def test_walkthrough_through_the_in_cluster_api(cluster: Cluster) -> None:
    proc = await asyncio.create_subprocess_exec(
        "bash", str(ROOT / "hack" / "walkthrough.sh"),
        env={**os.environ, "NEXUS_URL": cluster.url, "WALKTHROUGH_TIMEOUT": "120"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 280)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "walkthrough passed" in text


async def test_manager_is_the_deployment_pod_from_the_dockerfile_image(cluster: Cluster) -> None:
    pods = [p for p in await cluster.manager_pods() if pod_ready(p)]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod = pods[0]
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet" and owner["name"].startswith("nexus-controller-manager-")
    image = pod["spec"]["containers"][0]["image"]
    # The image the pod runs is the one `make docker-build` made from the Dockerfile here.
    docker = [
        "/usr/bin/docker", "-H", f"unix://{cluster.kubeconfig.parent / 'docker' / 'docker.sock'}",
    ]  # fmt: skip
    out = await asyncio.to_thread(
        subprocess.run, [*docker, "image", "inspect", image], capture_output=True, check=True
    )
    inspect = json.loads(out.stdout)[0]
    assert inspect["Config"]["Labels"]["org.opencontainers.image.title"] == "nexus"
    assert inspect["Config"]["User"] == "65532:65532"
    status = pod["status"]["containerStatuses"][0]
    assert status["imageID"].endswith(inspect["Id"])
    uid = await cluster.akubectl("exec", "-n", SYSTEM_NS, pod["metadata"]["name"], "--", "id", "-u")
    assert uid.strip() == "65532"


async def test_manager_runs_under_its_service_account_and_clusterrole(cluster: Cluster) -> None:
    pod = (await cluster.manager_pods())[0]
    assert pod["spec"]["serviceAccountName"] == "nexus-controller-manager"
    token = await cluster.akubectl(
        "exec", "-n", SYSTEM_NS, pod["metadata"]["name"], "--",
        "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token",
    )  # fmt: skip
    assert token.count(".") == 2, "no ServiceAccount token mounted"
    sa = "system:serviceaccount:nexus-system:nexus-controller-manager"
    # Least privilege, as rendered from config/rbac: what it needs, and nothing like secrets.
    yes = await cluster.akubectl("auth", "can-i", "create", "namespaces", "--as", sa, check=False)
    no = await cluster.akubectl("auth", "can-i", "list", "secrets", "-A", "--as", sa, check=False)
    assert yes.strip() == "yes" and no.strip() == "no"


async def test_api_answers_through_the_service(api: Api) -> None:
    status, body = await api.call("GET", "/readyz")
    assert status == 200 and body["status"] == "ready"


async def test_manager_log_has_no_403(cluster: Cluster) -> None:
    """Runs after the other files' tests (alphabetical order is not relied on: see the
    restart test, which checks the old pod's log before deleting it)."""
    pod = (await cluster.manager_pods())[0]
    log = await cluster.akubectl("logs", "-n", SYSTEM_NS, pod["metadata"]["name"])
    assert log.strip(), "empty manager log"
    assert forbidden_lines(log) == []
