"""The cluster's traffic stays on the machine: local routes, no way off the node for pods."""

from __future__ import annotations

import asyncio
import json

from .cluster import SYSTEM_NS, Cluster

LOCAL_DEVICES = {"nexus0", "cni0", "lo"}
# An address in the service range that no Service has: nothing rewrites it, so a packet for it
# is routed like any address that is not a pod's.
UNALLOCATED_SERVICE_IP = "10.96.255.254"


async def route_device(addr: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", "-j", "route", "get", addr, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return str(json.loads(out)[0]["dev"])


async def test_node_pod_and_service_addresses_are_routed_to_local_devices(cluster: Cluster) -> None:
    for addr in ("10.250.0.1", "10.244.0.77", "10.244.200.1", "10.96.0.1", UNALLOCATED_SERVICE_IP):
        assert await route_device(addr) in LOCAL_DEVICES, addr


async def test_a_pod_is_refused_at_once_off_the_node(cluster: Cluster) -> None:
    probe = (
        "import socket, time\n"
        "t = time.monotonic()\n"
        "try:\n"
        f"    socket.create_connection(('{UNALLOCATED_SERVICE_IP}', 80), timeout=10)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, round(time.monotonic() - t, 1))\n"
    )
    out = await cluster.akubectl(
        "exec", "-n", SYSTEM_NS, "deploy/nexus-controller-manager", "--", "python3", "-c", probe
    )
    kind, seconds = out.split()
    # Rejected by the node's filter (not silently dropped somewhere, not forwarded).
    assert kind == "ConnectionRefusedError" and float(seconds) < 5, out


async def test_pods_get_no_nameserver(cluster: Cluster) -> None:
    conf = await cluster.akubectl(
        "exec", "-n", SYSTEM_NS, "deploy/nexus-controller-manager", "--", "cat", "/etc/resolv.conf"
    )
    assert "nameserver" not in conf, conf


async def test_the_node_routes_nothing_from_a_pod_off_the_node(cluster: Cluster) -> None:
    """Asked of the routing tables (`ip route get ... iif cni0`): no packet is sent."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "-j", "route", "show", "default", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    targets = [r["gateway"] for r in json.loads(out) if "gateway" in r] + ["198.51.100.7"]
    for addr in targets:
        proc = await asyncio.create_subprocess_exec(
            "ip", "-j", "route", "get", addr, "from", "10.244.0.5", "iif", "cni0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode != 0 or json.loads(out)[0].get("type") == "unreachable", (
            addr, out, err,
        )  # fmt: skip
