"""The local node agent on a real control plane (with the controller manager) and real
astromesh nodes: node Deployments become processes on addresses of their own, probes decide
readiness, crashes restart, deletions clean up, the cap keeps pods Pending.

The Deployments are the ones the tenant controller builds; their pods carry one extra label
so that this module's agents serve only the pods of this module.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus.controllers import desired
from nexus.localnode import DEFAULT_SELECTOR, REASON_CAPACITY, LocalNodeAgent
from nexus.localnode.addresses import parse_range
from nexus.localnode.node import LEASE_NAMESPACE, NODES
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import DEPLOYMENTS, EVENTS, LEASES, NAMESPACES, PODS

from ..conftest import ROOT
from ..support.faults import eventually
from ..support.localnode import local_node, random_range

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

Object = dict[str, Any]

RUN_LABEL = "nexus-test-localnode"
RUN = uuid.uuid4().hex[:8]


def selector(run: str = RUN) -> str:
    return f"{DEFAULT_SELECTOR},{RUN_LABEL}={run}"


def node_deployment(
    namespace: str,
    *,
    run: str = RUN,
    replicas: int = 1,
    readiness_path: str | None = None,
    liveness_path: str | None = None,
) -> Object:
    """The tenant controller's node Deployment, its readiness probed every second (not 10 s).

    The liveness probe keeps the template's timing (a slow start under load must not be
    taken for a dead node) unless ``liveness_path`` replaces it with a quick failing one.
    """
    tenant = {"metadata": {"name": namespace, "namespace": "nexus-system"}, "spec": {}}
    dep = desired.node_deployment(tenant, "astromesh/node:test")
    dep["spec"]["replicas"] = replicas
    template = dep["spec"]["template"]
    template["metadata"]["labels"][RUN_LABEL] = run
    template["spec"]["terminationGracePeriodSeconds"] = 5
    container = template["spec"]["containers"][0]
    readiness = container["readinessProbe"] = {**container["readinessProbe"], "periodSeconds": 1}
    if readiness_path is not None:
        readiness["httpGet"] = {**readiness["httpGet"], "path": readiness_path}
    if liveness_path is not None:
        liveness = container["livenessProbe"] = {**container["livenessProbe"]}
        liveness["httpGet"] = {**liveness["httpGet"], "path": liveness_path}
        liveness.update(periodSeconds=1, failureThreshold=2)
    return dep


@pytest.fixture(scope="module")
async def agent(
    envtest: Environment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalNodeAgent]:
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes"):
        pytest.skip("a real cluster has kubelets of its own")
    async with local_node(
        envtest, tmp_path_factory.mktemp("localnode"), label_selector=selector()
    ) as a:
        yield a


async def pods_of(kube: Client, namespace: str) -> list[Object]:
    items, _ = await kube.list_all(PODS, namespace, label_selector=f"{RUN_LABEL}")
    return items


def is_ready(pod: Object) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


async def one_pod(kube: Client, namespace: str, *, ready: bool | None = None) -> Object | None:
    pods = [p for p in await pods_of(kube, namespace) if not p["metadata"].get("deletionTimestamp")]
    if len(pods) != 1:
        return None
    if ready is not None and is_ready(pods[0]) != ready:
        return None
    return pods[0]


async def health(url: str) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(f"{url}/v1/health") as r,
    ):
        return r.status


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


async def events_for(kube: Client, namespace: str, name: str) -> list[Object]:
    items, _ = await kube.list_all(EVENTS, namespace)
    return [e for e in items if (e.get("regarding") or {}).get("name") == name]


async def test_node_pod_runs_on_its_own_address_and_deployment_becomes_available(
    agent: LocalNodeAgent, kube: Client, namespace: str
) -> None:
    await kube.create(DEPLOYMENTS, node_deployment(namespace), namespace)
    pod = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=90)
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == agent.node_name
    status = pod["status"]
    ip = status["podIP"]
    assert ip != "127.0.0.1"
    assert ip in {str(a) for a in parse_range(agent.config.address_range)}
    assert status["hostIP"] == "127.0.0.1"
    assert status["phase"] == "Running"
    types = {c["type"]: c["status"] for c in status["conditions"]}
    assert types == {
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    (cs,) = status["containerStatuses"]
    assert cs["ready"] is True
    assert cs["restartCount"] == 0
    assert "running" in cs["state"]

    info = agent.pod(namespace, name)
    assert info is not None
    assert info.ip == ip
    assert info.pid is not None
    assert await health(f"http://{ip}:8000") == 200
    env = proc_environ(info.pid)
    assert env["ASTROMESH_CONFIG_DIR"] == str(info.workdir / "config")
    assert Path(f"/proc/{info.pid}/cwd").resolve() == info.workdir.resolve()
    assert (info.workdir / "config").is_dir()

    async def available() -> bool:
        dep = await kube.get(DEPLOYMENTS, "astromesh-node", namespace)
        return (dep.get("status") or {}).get("availableReplicas") == 1

    await eventually(available, timeout=30)

    node = await kube.get(NODES, agent.node_name)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    assert node["status"]["capacity"]["pods"] == str(agent.config.max_pods)
    lease = await kube.get(LEASES, agent.node_name, LEASE_NAMESPACE)
    assert lease["spec"]["holderIdentity"] == agent.node_name

    reasons = {e["reason"] for e in await events_for(kube, namespace, name)}
    assert {"Scheduled", "Started"} <= reasons


async def test_two_namespaces_get_two_processes_on_two_addresses(
    agent: LocalNodeAgent, kube: Client
) -> None:
    namespaces = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    try:
        for ns in namespaces:
            await kube.create(NAMESPACES, {"metadata": {"name": ns, "labels": {"nexus-test": "1"}}})
            await kube.create(DEPLOYMENTS, node_deployment(ns), ns)
        pods = [
            await eventually(lambda ns=ns: one_pod(kube, ns, ready=True), timeout=90)
            for ns in namespaces
        ]
        ips = [p["status"]["podIP"] for p in pods]
        assert len(set(ips)) == 2, ips
        infos = [
            agent.pod(ns, p["metadata"]["name"]) for ns, p in zip(namespaces, pods, strict=True)
        ]
        assert all(i is not None for i in infos)
        pids = {i.pid for i in infos if i is not None}
        assert len(pids) == 2
        assert len({i.workdir for i in infos if i is not None}) == 2
        for ip in ips:
            assert await health(f"http://{ip}:8000") == 200

        # Separate processes keep separate state: an agent created on one node is not on the
        # other.
        async with aiohttp.ClientSession() as s:
            first, second = (f"http://{ip}:8000" for ip in ips)
            async with s.get(f"{first}/v1/agents") as r:
                before = await r.json()
            async with s.get(f"{second}/v1/agents") as r:
                assert await r.json() == before
    finally:
        for ns in namespaces:
            await kube.delete(NAMESPACES, ns, ignore_not_found=True)


async def test_killed_process_is_restarted_and_counted(
    agent: LocalNodeAgent, kube: Client, namespace: str
) -> None:
    await kube.create(DEPLOYMENTS, node_deployment(namespace), namespace)
    pod = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=90)
    name = pod["metadata"]["name"]
    info = agent.pod(namespace, name)
    assert info is not None and info.pid is not None
    old_pid = info.pid

    os.kill(old_pid, signal.SIGKILL)
    await eventually(lambda: one_pod(kube, namespace, ready=False), timeout=20)

    restarted = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=60)
    assert restarted["metadata"]["uid"] == pod["metadata"]["uid"]
    (cs,) = restarted["status"]["containerStatuses"]
    assert cs["restartCount"] == 1
    terminated = cs["lastState"]["terminated"]
    assert terminated["exitCode"] == 137
    assert terminated["reason"] == "Error"
    info = agent.pod(namespace, name)
    assert info is not None and info.pid not in (None, old_pid)
    assert info.ip == restarted["status"]["podIP"] == pod["status"]["podIP"]
    assert await health(info.url) == 200


async def test_deleted_pod_and_namespace_leave_nothing_behind(
    agent: LocalNodeAgent, kube: Client
) -> None:
    ns = f"t-{uuid.uuid4().hex[:10]}"
    await kube.create(NAMESPACES, {"metadata": {"name": ns, "labels": {"nexus-test": "1"}}})
    try:
        await kube.create(DEPLOYMENTS, node_deployment(ns), ns)
        pod = await eventually(lambda: one_pod(kube, ns, ready=True), timeout=90)
        first = agent.pod(ns, pod["metadata"]["name"])
        assert first is not None and first.pid is not None

        # One pod deleted (gracefully): its process and folder go, the pod is removed for
        # good, and the ReplicaSet's replacement runs in its place.
        await kube.delete(PODS, pod["metadata"]["name"], ns)

        async def replaced() -> Object | None:
            new = await one_pod(kube, ns, ready=True)
            return new if new is not None and new["metadata"]["uid"] != first.uid else None

        second_pod = await eventually(replaced, timeout=90)
        assert await kube.get_or_none(PODS, pod["metadata"]["name"], ns) is None
        assert not alive(first.pid)
        assert not first.workdir.exists()
        second = agent.pod(ns, second_pod["metadata"]["name"])
        assert second is not None and second.pid is not None

        # The namespace deleted: the controller manager deletes the pods, the agent stops
        # them and finishes their deletion, so the namespace goes away.
        await kube.delete(NAMESPACES, ns)
        await eventually(lambda: _gone(kube, ns), timeout=90)
        assert not alive(second.pid)
        assert not second.workdir.exists()
        assert agent.pod(ns, second_pod["metadata"]["name"]) is None
    finally:
        await kube.delete(NAMESPACES, ns, ignore_not_found=True)


async def _gone(kube: Client, ns: str) -> bool:
    return await kube.get_or_none(NAMESPACES, ns) is None


async def test_probe_that_never_passes_keeps_pod_not_ready(
    agent: LocalNodeAgent, kube: Client, namespace: str
) -> None:
    await kube.create(
        DEPLOYMENTS, node_deployment(namespace, readiness_path="/no-such-path"), namespace
    )
    pod = await eventually(lambda: one_pod(kube, namespace), timeout=60)
    name = pod["metadata"]["name"]
    info = await eventually(lambda: agent.pod(namespace, name), timeout=30)
    # The process serves (its health endpoint answers), but its readiness probe gets 404.
    await eventually(lambda: _healthy(info.url), timeout=60)
    await eventually(
        lambda: _has_event(kube, namespace, name, "Unhealthy", "statuscode: 404"), timeout=30
    )
    await asyncio.sleep(3)  # several probe periods
    pod = await kube.get(PODS, name, namespace)
    assert not is_ready(pod)
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    dep = await kube.get(DEPLOYMENTS, "astromesh-node", namespace)
    assert not (dep.get("status") or {}).get("availableReplicas")


async def test_failing_liveness_probe_restarts_the_process(
    agent: LocalNodeAgent, kube: Client, namespace: str
) -> None:
    await kube.create(
        DEPLOYMENTS, node_deployment(namespace, liveness_path="/no-such-path"), namespace
    )
    pod = await eventually(lambda: one_pod(kube, namespace), timeout=60)
    name = pod["metadata"]["name"]

    async def restarted() -> bool:
        p = await kube.get(PODS, name, namespace)
        statuses = (p.get("status") or {}).get("containerStatuses") or [{}]
        return int(statuses[0].get("restartCount") or 0) >= 1

    await eventually(restarted, timeout=90)
    await eventually(lambda: _has_event(kube, namespace, name, "Killing", "liveness"), timeout=30)


async def _healthy(url: str) -> bool:
    try:
        return await health(url) == 200
    except (aiohttp.ClientError, OSError):
        return False


async def _has_event(kube: Client, ns: str, name: str, reason: str, text: str) -> bool:
    return any(
        e["reason"] == reason and text in (e.get("note") or "")
        for e in await events_for(kube, ns, name)
    )


async def test_cap_keeps_extra_pods_pending_with_an_event(
    envtest: Environment, kube: Client, namespace: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    async with local_node(
        envtest, tmp_path, max_pods=1, pending_retry=300, label_selector=selector(run)
    ) as capped:
        await kube.create(DEPLOYMENTS, node_deployment(namespace, run=run, replicas=2), namespace)

        async def split() -> tuple[Object, Object] | None:
            pods = await pods_of(kube, namespace)
            running = [p for p in pods if p["spec"].get("nodeName") == capped.node_name]
            pending = [p for p in pods if not p["spec"].get("nodeName")]
            if len(running) == 1 and len(pending) == 1 and is_ready(running[0]):
                conds = pending[0].get("status", {}).get("conditions") or []
                if any(c.get("reason") == "Unschedulable" for c in conds):
                    return running[0], pending[0]
            return None

        running, pending = await eventually(split, timeout=90)
        assert pending["status"]["phase"] == "Pending"
        (cond,) = pending["status"]["conditions"]
        assert cond["type"] == "PodScheduled" and cond["status"] == "False"
        assert "cap of 1" in cond["message"]
        await eventually(
            lambda: _has_event(
                kube, namespace, pending["metadata"]["name"], REASON_CAPACITY, "cap"
            ),
            timeout=30,
        )
        assert len(capped.pods()) == 1

        # A slot frees: a waiting pod gets it at once, not at the periodic retry (5 min here).
        await kube.delete(PODS, running["metadata"]["name"], namespace)

        async def refilled() -> bool:
            again = await split()
            return again is not None and again[0]["metadata"]["uid"] != running["metadata"]["uid"]

        t0 = time.monotonic()
        await eventually(refilled, timeout=60)
        assert time.monotonic() - t0 < 60
        assert len(capped.pods()) == 1


async def test_agent_restart_resumes_its_pods(
    envtest: Environment, kube: Client, namespace: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    settings: dict[str, Any] = {"label_selector": selector(run), "node_name": f"resume-{run}"}
    async with local_node(envtest, tmp_path, **settings) as first:
        await kube.create(DEPLOYMENTS, node_deployment(namespace, run=run), namespace)
        pod = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=90)
        info = first.pod(namespace, pod["metadata"]["name"])
        assert info is not None and info.pid is not None
        settings["address_range"] = first.config.address_range
    # Stopped: no process left, the pod is not ready, the node no longer claims to be Ready.
    assert not alive(info.pid)
    pod = await kube.get(PODS, pod["metadata"]["name"], namespace)
    assert not is_ready(pod)
    node = await kube.get(NODES, f"resume-{run}")
    assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == [
        "Unknown"
    ]
    async with local_node(envtest, tmp_path, **settings) as second:
        again = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=90)
        assert again["metadata"]["uid"] == pod["metadata"]["uid"]
        assert again["status"]["podIP"] == info.ip
        assert again["status"]["containerStatuses"][0]["restartCount"] == 1
        resumed = second.pod(namespace, again["metadata"]["name"])
        assert resumed is not None and resumed.pid not in (None, info.pid)
        assert await health(resumed.url) == 200
        await kube.delete(NAMESPACES, namespace)
        await eventually(lambda: _gone(kube, namespace), timeout=90)
        assert not resumed.workdir.exists()


async def test_command_line_agent_serves_until_sigterm(
    envtest: Environment, kube: Client, namespace: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    node_name = f"cli-{run}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus.localnode", "--kubeconfig", str(envtest.kubeconfig_path),
        "--node-name", node_name, "--address-range", random_range(), "--root", str(tmp_path),
        "--selector", selector(run), "--max-pods", "2", "--restart-backoff", "0.5",
        "--log-format", "console",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:

        async def node_ready() -> bool:
            node = await kube.get_or_none(NODES, node_name)
            conds = ((node or {}).get("status") or {}).get("conditions") or ()
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        await eventually(node_ready, timeout=60)
        await kube.create(DEPLOYMENTS, node_deployment(namespace, run=run), namespace)
        pod = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=90)
        assert pod["spec"]["nodeName"] == node_name
        container_id = pod["status"]["containerStatuses"][0]["containerID"]
        pid = int(container_id.rpartition("-")[2])
        assert alive(pid)
        assert await health(f"http://{pod['status']['podIP']}:8000") == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    assert not alive(pid)
    node = await kube.get(NODES, node_name)
    assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == [
        "Unknown"
    ]


async def test_restricted_node_pod_runs_with_its_volumes_as_pod_folders(
    agent: LocalNodeAgent, kube: Client, namespace: str
) -> None:
    """The tenant controller's pod (restricted profile: an init container seeding the config
    volume, emptyDir volumes, HOME in one of them) runs; its volumes are folders of the pod."""
    await kube.create(DEPLOYMENTS, node_deployment(namespace), namespace)
    pod = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=90)
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["name"] == "seed-config"
    assert init["state"]["terminated"]["exitCode"] == 0
    info = agent.pod(namespace, pod["metadata"]["name"])
    assert info is not None and info.pid is not None
    env = proc_environ(info.pid)
    assert env["HOME"] == str(info.workdir / "volumes" / "home")
    assert (info.workdir / "volumes" / "home").is_dir()
    reasons = {e["reason"] for e in await events_for(kube, namespace, pod["metadata"]["name"])}
    assert "InitSkipped" in reasons


async def test_namespace_selector_schedules_only_matching_namespaces(
    envtest: Environment, kube: Client, namespace: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    async with local_node(
        envtest,
        tmp_path,
        label_selector=selector(run),
        namespace_selector=f"nexus-test-served={run}",
        pending_retry=300,
    ) as picky:
        await kube.create(DEPLOYMENTS, node_deployment(namespace, run=run), namespace)

        async def created() -> Object | None:
            return await one_pod(kube, namespace)

        pod = await eventually(created, timeout=60)
        await asyncio.sleep(3)
        pod = await kube.get(PODS, pod["metadata"]["name"], namespace)
        assert not pod["spec"].get("nodeName"), "bound in a namespace the agent does not serve"
        assert picky.pods() == []
        # Labelled: the namespace's event wakes its pod at once (the retry is 5 min here).
        await kube.patch(
            NAMESPACES, namespace, {"metadata": {"labels": {"nexus-test-served": run}}}
        )
        ready = await eventually(lambda: one_pod(kube, namespace, ready=True), timeout=60)
        assert ready["spec"]["nodeName"] == picky.node_name
        assert len(picky.pods()) == 1
