"""The test control plane itself: real processes, real API, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from nexus.runtime.client import ApiError, Client
from nexus.runtime.envtest import Environment, install_crds
from nexus.runtime.resource import CONFIGMAPS, CRDS, DEPLOYMENTS, NAMESPACES, Resource

from ..conftest import ROOT, TEST_CRDS, WIDGETS

pytestmark = pytest.mark.cluster


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


async def test_apiserver_is_real_and_serves_version(envtest: Environment, kube: Client) -> None:
    version = await kube.request("GET", "/version")
    assert version["major"] == "1"
    assert version["gitVersion"].startswith("v1.")
    names = [Path(f"/proc/{pid}/exe").resolve().name for pid in envtest.pids]
    assert "kube-apiserver" in names
    assert "etcd" in names


async def test_namespace_create_get_list(kube: Client, namespace: str) -> None:
    got = await kube.get(NAMESPACES, namespace)
    assert got["metadata"]["name"] == namespace
    items, rv = await kube.list_all(NAMESPACES, label_selector="nexus-test=1")
    assert namespace in {i["metadata"]["name"] for i in items}
    assert rv


async def test_watch_sees_a_new_namespace(kube: Client) -> None:
    _, rv = await kube.list_all(NAMESPACES)
    name = f"w-{os.getpid()}-{time.monotonic_ns() % 100000}"

    async def first_added() -> str:
        async for ev in kube.watch(NAMESPACES, resource_version=rv, timeout_seconds=20):
            if ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == name:
                return str(ev["object"]["metadata"]["name"])
        return ""

    watcher = asyncio.create_task(first_added())
    await asyncio.sleep(0.2)
    await kube.create(NAMESPACES, {"metadata": {"name": name}})
    assert await asyncio.wait_for(watcher, 15) == name
    await kube.delete(NAMESPACES, name)


async def test_custom_resource_from_crd_file(kube: Client, namespace: str) -> None:
    created = await kube.create(
        WIDGETS, {"metadata": {"name": "w1", "namespace": namespace}, "spec": {"size": 3}}
    )
    assert created["kind"] == "Widget"
    got = await kube.get(WIDGETS, "w1", namespace)
    assert got["spec"]["size"] == 3
    # The status subresource is enabled: a status patch goes through /status only.
    patched = await kube.patch_status(WIDGETS, "w1", {"observedSize": 3}, namespace)
    assert patched["status"]["observedSize"] == 3
    items, _ = await kube.list_all(WIDGETS, namespace)
    assert [i["metadata"]["name"] for i in items] == ["w1"]
    # The CRD's schema is enforced by the real server.
    with pytest.raises(ApiError) as err:
        await kube.create(
            WIDGETS, {"metadata": {"name": "bad", "namespace": namespace}, "spec": {"size": -1}}
        )
    assert err.value.invalid


async def test_custom_resource_watch(kube: Client, namespace: str) -> None:
    _, rv = await kube.list_all(WIDGETS, namespace)
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async for ev in kube.watch(WIDGETS, namespace, resource_version=rv, timeout_seconds=20):
            seen.append((ev["type"], ev["object"]["metadata"]["name"]))
            if ev["type"] == "DELETED":
                return

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.2)
    await kube.create(WIDGETS, {"metadata": {"name": "w2", "namespace": namespace}})
    await kube.patch(WIDGETS, "w2", {"spec": {"color": "blue"}}, namespace)
    await kube.delete(WIDGETS, "w2", namespace)
    await asyncio.wait_for(task, 15)
    assert seen == [("ADDED", "w2"), ("MODIFIED", "w2"), ("DELETED", "w2")]


async def test_controller_manager_runs_deployment_controller(kube: Client, namespace: str) -> None:
    deployment = {
        "metadata": {"name": "d", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    await kube.create(DEPLOYMENTS, deployment)
    rs = None
    for _ in range(100):
        page = await kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets")
        if page["items"]:
            rs = page["items"][0]
            break
        await asyncio.sleep(0.1)
    assert rs is not None, "kube-controller-manager did not create a ReplicaSet"


async def test_kubeconfig_is_usable(envtest: Environment, kube: Client) -> None:
    cfg = k8s_client.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(envtest.kubeconfig_path), client_configuration=cfg
    )
    async with k8s_client.ApiClient(cfg) as api:
        assert (await Client(api).get(NAMESPACES, "default"))["metadata"]["name"] == "default"
    assert oct(envtest.kubeconfig_path.stat().st_mode & 0o777) == "0o600"
    doc = yaml.safe_load(envtest.kubeconfig_path.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == envtest.host


async def test_install_crds_twice_creates_then_updates_in_place(
    api_client: k8s_client.ApiClient, kube: Client, namespace: str, tmp_path: Path
) -> None:
    # A CRD of its own (a fresh group), so the session's CRDs are left alone.
    group = f"g{uuid.uuid4().hex[:10]}.test.nexus.io"
    name = f"gadgets.{group}"
    doc = yaml.safe_load((TEST_CRDS / "widgets.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["group"] = group
    doc["spec"]["names"] = {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"}
    path = tmp_path / "gadgets.yaml"
    path.write_text(yaml.safe_dump(doc))
    gadgets = Resource(group, "v1", "gadgets", "Gadget")
    try:
        assert await install_crds(api_client, [path]) == [name]
        first = (await kube.get(CRDS, name))["metadata"]
        await kube.create(
            gadgets, {"metadata": {"name": "g1", "namespace": namespace}, "spec": {"size": 1}}
        )

        # The same file again: accepted, and nothing changes.
        assert await install_crds(api_client, [path]) == [name]
        second = (await kube.get(CRDS, name))["metadata"]
        assert (second["uid"], second["generation"]) == (first["uid"], first["generation"])

        # A changed file: the existing CRD is updated in place, its objects kept.
        version = doc["spec"]["versions"][0]
        spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec_schema["properties"]["shape"] = {"type": "string"}
        path.write_text(yaml.safe_dump(doc))
        assert await install_crds(api_client, [path]) == [name]
        third = await kube.get(CRDS, name)
        assert third["metadata"]["uid"] == first["uid"]
        assert third["metadata"]["generation"] == first["generation"] + 1
        served = third["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert served["properties"]["spec"]["properties"]["shape"] == {"type": "string"}
        assert (await kube.get(gadgets, "g1", namespace))["spec"] == {"size": 1}
    finally:
        await kube.delete(CRDS, name, ignore_not_found=True)


async def test_every_process_stops_and_temp_dir_is_removed() -> None:
    env = Environment()
    async with env:
        pids = env.pids
        root = env.kubeconfig_path.parent
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert not any(_alive(p) for p in pids)
    assert not root.exists()


async def test_failing_body_still_tears_everything_down() -> None:
    env = Environment()
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with env:
            pids = env.pids
            raise RuntimeError("boom")
    assert pids and not any(_alive(p) for p in pids)


async def test_apiserver_restart_keeps_data() -> None:
    env = Environment()
    async with env, await env.api_client() as api:
        c = Client(api)
        await c.create(CONFIGMAPS, {"metadata": {"name": "keep", "namespace": "default"}})
        await env.restart_apiserver()
        got = await c.get(CONFIGMAPS, "keep", "default")
        assert got["metadata"]["name"] == "keep"


async def test_compaction_makes_old_watch_gone() -> None:
    # The apiserver's watch cache would serve an old resourceVersion from memory; without it the
    # watch reaches etcd, as it does on a busy cluster once the cache window has moved on.
    envtest_env = Environment(extra_apiserver_flags=["--watch-cache=false"])
    async with envtest_env, await envtest_env.api_client() as api:
        c = Client(api)
        _, old_rv = await c.list_all(CONFIGMAPS, "default")
        for i in range(3):
            await c.create(CONFIGMAPS, {"metadata": {"name": f"c{i}", "namespace": "default"}})
        await envtest_env.compact_etcd()
        with pytest.raises(ApiError) as err:
            async for _ in c.watch(
                CONFIGMAPS, "default", resource_version=old_rv, timeout_seconds=10
            ):
                pass
        assert err.value.gone


def _setup_envtest(env: dict[str, str] | None = None) -> tuple[str, float]:
    start = time.monotonic()
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "setup-envtest.sh")],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return out.stdout.strip(), time.monotonic() - start


def test_setup_envtest_is_cached_and_stable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KUBEBUILDER_ASSETS"}
    first, _ = _setup_envtest(env)
    second, took = _setup_envtest(env)
    assert first == second
    assert took < 2.0
    assert all((Path(first) / b).is_file() for b in ("etcd", "kube-apiserver"))


def test_setup_envtest_honours_kubebuilder_assets(tmp_path: Path) -> None:
    cached, _ = _setup_envtest()
    for b in ("etcd", "kube-apiserver"):
        (tmp_path / b).symlink_to(Path(cached) / b)
    out, _ = _setup_envtest({**os.environ, "KUBEBUILDER_ASSETS": str(tmp_path)})
    assert out == str(tmp_path)
