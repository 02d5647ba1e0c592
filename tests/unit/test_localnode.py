"""The local node agent's pure parts: address ranges, probe thresholds and parsing, pod status,
what it reads from a pod spec, its process launcher and its command line."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nexus.cli import build_parser
from nexus.controllers import desired
from nexus.localnode import podspec
from nexus.localnode.addresses import AddressPool, parse_range, port_free
from nexus.localnode.cli import config_from_args
from nexus.localnode.config import DEFAULT_SELECTOR, LocalNodeConfig
from nexus.localnode.probes import Probe, ProbeLoop, run_probe
from nexus.localnode.process import NodeProcess
from nexus.localnode.status import (
    Conditions,
    ContainerStatus,
    phase,
    pod_status,
    skipped_init_status,
)

from ..support.faults import eventually

# -- addresses ----------------------------------------------------------------------------------


def test_ranges_are_loopback_only_and_skip_the_host_address() -> None:
    assert [str(a) for a in parse_range("127.0.100.0/30")] == ["127.0.100.1", "127.0.100.2"]
    assert [str(a) for a in parse_range("127.0.0.1-127.0.0.3")] == ["127.0.0.2", "127.0.0.3"]
    assert [str(a) for a in parse_range("127.9.9.9/32")] == ["127.9.9.9"]
    for bad in ("10.0.0.0/24", "127.255.255.0-128.0.0.2", "nonsense", "127.0.0.5-127.0.0.1"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_pool_is_deterministic_sticky_and_exhaustible() -> None:
    pool = AddressPool("127.0.100.0/29")  # .1 - .6
    assert pool.allocate("a") == "127.0.100.1"
    assert pool.allocate("b") == "127.0.100.2"
    assert pool.allocate("a") == "127.0.100.1"
    assert pool.allocate("c", preferred="127.0.100.5") == "127.0.100.5"
    assert pool.allocate("d", preferred="127.0.100.2") == "127.0.100.3"  # taken: lowest free
    assert pool.allocate("e", preferred="10.0.0.1") == "127.0.100.4"  # outside: ignored
    pool.release("b")
    assert pool.allocate("f") == "127.0.100.2"
    assert pool.allocate("g") == "127.0.100.6"
    with pytest.raises(LookupError):
        pool.allocate("h")
    assert pool.in_use == pool.size == 6


def test_pool_skips_an_address_another_process_listens_on() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.100.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_free("127.0.100.1", port)
        pool = AddressPool("127.0.100.0/29", port=port)
        assert pool.allocate("a") == "127.0.100.2"


# -- probes -------------------------------------------------------------------------------------


def test_probe_parsing_resolves_named_ports_and_defaults() -> None:
    probe = Probe.from_spec({"httpGet": {"path": "/v1/health", "port": "http"}}, {"http": 8000})
    assert (probe.handler, probe.port, probe.path) == ("httpGet", 8000, "/v1/health")
    assert (probe.period, probe.timeout, probe.failure_threshold) == (10.0, 1.0, 3)
    tcp = Probe.from_spec({"tcpSocket": {"port": 9000}, "periodSeconds": 2}, {})
    assert (tcp.handler, tcp.port, tcp.period) == ("tcpSocket", 9000, 2.0)
    with pytest.raises(ValueError):
        Probe.from_spec({"httpGet": {"port": "nope"}}, {})
    with pytest.raises(ValueError):
        Probe.from_spec({"grpc": {"port": 1}}, {})


async def test_probe_loop_thresholds_and_flips() -> None:
    results = iter([False, True, True, False, False, False, True])
    changes: list[bool] = []
    failures: list[str] = []

    async def check() -> tuple[bool, str]:
        try:
            return next(results), "boom"
        except StopIteration:
            await asyncio.Event().wait()
            raise

    probe = Probe("exec", command=("x",), period=0.001, success_threshold=2, failure_threshold=3)
    loop = ProbeLoop(
        probe,
        check,
        initial=False,
        on_change=lambda ok, _m: changes.append(ok),
        on_failure=failures.append,
    )
    task = asyncio.create_task(loop.run())
    await eventually(lambda: loop.probes >= 7, timeout=5, interval=0.005)
    task.cancel()
    # Not ready -> 2 successes -> ready; 3 failures -> not ready; 1 success < threshold 2.
    assert changes == [True, False]
    assert len(failures) == 4
    assert loop.result is False


async def test_startup_probe_gives_up_after_its_threshold_and_gate_skips() -> None:
    changes: list[bool] = []

    async def never() -> tuple[bool, str]:
        return False, "refused"

    probe = Probe("exec", command=("x",), period=0.001, failure_threshold=2)
    loop = ProbeLoop(
        probe, never, initial=False, on_change=lambda ok, _m: changes.append(ok), startup=True
    )
    task = asyncio.create_task(loop.run())
    await eventually(lambda: loop.probes >= 4, timeout=5, interval=0.005)
    task.cancel()
    assert changes == [False]  # once, at the threshold

    gated = ProbeLoop(probe, never, initial=True, on_change=lambda *_: None, gate=lambda: False)
    task = asyncio.create_task(gated.run())
    await asyncio.sleep(0.05)
    task.cancel()
    assert gated.probes == 0


async def test_http_and_tcp_probes_against_a_real_server() -> None:
    async def ok(_r: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def moved(_r: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.100.7", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as s:

            async def run(spec: dict[str, object]) -> tuple[bool, str]:
                return await run_probe(Probe.from_spec(spec, {}), session=s, pod_ip="127.0.100.7")

            assert await run({"httpGet": {"path": "/ok", "port": port}}) == (True, "")
            assert (await run({"httpGet": {"path": "/moved", "port": port}}))[0]
            ok, msg = await run({"httpGet": {"path": "/missing", "port": port}})
            assert not ok and "statuscode: 404" in msg
            assert (await run({"tcpSocket": {"port": port}}))[0]
            ok, msg = await run({"tcpSocket": {"port": port, "host": "127.0.100.8"}})
            assert not ok and "127.0.100.8" in msg
            ok, _ = await run({"exec": {"command": [sys.executable, "-c", "exit(3)"]}})
            assert not ok
    finally:
        await runner.cleanup()


# -- status -------------------------------------------------------------------------------------


def test_conditions_keep_transition_time_while_status_holds() -> None:
    seeded = Conditions.from_status(
        {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "old"}]}
    )
    seeded.set("Ready", True)
    assert seeded.items["Ready"]["lastTransitionTime"] == "old"
    seeded.set("Ready", False, "ContainersNotReady")
    assert seeded.items["Ready"]["lastTransitionTime"] != "old"
    seeded.set("PodScheduled", True)
    seeded.set("Initialized", True)
    assert [c["type"] for c in seeded.as_list()] == ["Initialized", "Ready", "PodScheduled"]


def test_pod_status_shape_and_phase() -> None:
    c = ContainerStatus(name="astromesh-node", image="img")
    assert phase(c) == "Pending"
    c.state = {"running": {"startedAt": "t"}}
    assert phase(c) == "Running"
    c.state = {"waiting": {"reason": "CrashLoopBackOff"}}
    c.restart_count = 1
    assert phase(c) == "Running"
    status = pod_status(
        container=c, conditions=Conditions(), host_ip="127.0.0.1", pod_ip="127.0.100.1",
        start_time="t",
    )  # fmt: skip
    assert status["podIPs"] == [{"ip": "127.0.100.1"}]
    assert status["containerStatuses"][0]["restartCount"] == 1


# -- pod spec -----------------------------------------------------------------------------------


def test_pod_spec_reading() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "deletionGracePeriodSeconds": 7},
        "spec": {
            "nodeName": "n",
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "c",
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ],
                }
            ],
        },
    }
    c = podspec.container(pod)
    assert podspec.unsupported(pod) is None
    assert podspec.serving_port(c) == 8000
    assert podspec.ports(c) == {"http": 8000}
    assert podspec.grace_period(pod) == 7.0
    env, skipped = podspec.environment(pod, c, "127.0.100.1", "127.0.0.1")
    assert env == {"A": "1", "POD": "p", "IP": "127.0.100.1"}
    assert skipped == ["S"]
    two = {"spec": {"containers": [{}, {}]}}
    assert "one container" in (podspec.unsupported(two) or "")
    assert podspec.serving_port({}) == 8000


def test_init_containers_are_reported_not_run_and_empty_dirs_become_pod_folders() -> None:
    pod = desired_node_pod()
    c = podspec.container(pod)
    assert podspec.unsupported(pod) is None
    assert [ic["name"] for ic in podspec.init_containers(pod)] == ["seed-config"]
    mounts = podspec.empty_dir_mounts(pod, c)
    assert mounts["/home/astromesh"] == "home" and mounts["/etc/astromesh"] == "config"
    local = {path: Path("/pod/volumes") / name for path, name in mounts.items()}
    assert podspec.relocate("/home/astromesh", local) == "/pod/volumes/home"
    assert podspec.relocate("/home/astromesh/.cache", local) == "/pod/volumes/home/.cache"
    assert podspec.relocate("/home/astromeshy", local) == "/home/astromeshy"
    assert podspec.relocate("1", local) == "1"
    status = pod_status(
        container=ContainerStatus(name="c", image="i"),
        conditions=Conditions(),
        host_ip="127.0.0.1",
        pod_ip="127.0.100.1",
        start_time="t",
        init_containers=[skipped_init_status(ic, "t") for ic in podspec.init_containers(pod)],
    )
    (init,) = status["initContainerStatuses"]
    assert init["name"] == "seed-config" and init["ready"] is True
    assert init["state"]["terminated"]["exitCode"] == 0


def desired_node_pod() -> dict[str, Any]:
    """A pod of the tenant controller's node Deployment (restricted profile, init container)."""
    tenant = {"metadata": {"name": "t-x", "namespace": "nexus-system"}, "spec": {}}
    template = desired.node_deployment(tenant, "astromesh/node:test")["spec"]["template"]
    return {"metadata": {"name": "p", "namespace": "t-x", "uid": "u"}, **template}


# -- process ------------------------------------------------------------------------------------


async def test_process_stop_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    proc = NodeProcess(
        [sys.executable, "-c", stubborn], env={}, cwd=tmp_path, log_path=tmp_path / "log"
    )
    await proc.start()
    await asyncio.sleep(0.3)  # let it install its handler
    code = await proc.stop(0.3)
    assert code == -9
    assert await proc.stop(1) == -9  # idempotent
    assert (tmp_path / "log").read_text().startswith("--- ")


# -- configuration ------------------------------------------------------------------------------


def test_cli_flags_become_a_config() -> None:
    args = build_parser().parse_args(
        ["localnode", "--kubeconfig", "k", "--address-range", "127.0.5.0/24", "--max-pods", "3",
         "--restart-backoff", "0.5", "--root", "/tmp/x"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.address_range, cfg.max_pods, cfg.restart_backoff_base) == ("127.0.5.0/24", 3, 0.5)
    assert cfg.root_dir == Path("/tmp/x")
    assert cfg.label_selector == DEFAULT_SELECTOR == "app.kubernetes.io/name=astromesh-node"
    with pytest.raises(ValueError):
        LocalNodeConfig(restart_backoff_base=0)


def test_default_selector_matches_the_node_deployments_pods() -> None:
    tenant = {"metadata": {"name": "acme", "namespace": "nexus-system"}, "spec": {}}
    labels = desired.node_deployment(tenant, "img")["spec"]["template"]["metadata"]["labels"]
    key, _, value = DEFAULT_SELECTOR.partition("=")
    assert labels[key] == value
