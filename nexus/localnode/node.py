"""The Node object of the local node agent, and its heartbeats.

Like a kubelet, the agent registers a Node with its capacity and a Ready condition, renews a
Lease in ``kube-node-lease`` every few seconds, and refreshes the Node's status now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import uuid
from typing import Any

import structlog

from nexus.localnode.config import LocalNodeConfig
from nexus.localnode.status import micro_time, rfc3339
from nexus.runtime.client import ApiError, Client
from nexus.runtime.resource import LEASES, Resource

log = structlog.get_logger("nexus.localnode.node")

Object = dict[str, Any]

NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
LEASE_NAMESPACE = "kube-node-lease"
#: On the Node, so that it can be told from real nodes (and found by tests).
LOCALNODE_LABEL = "nexus.astromesh.io/localnode"
AGENT_VERSION = "nexus-localnode/0.1"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class NodeRegistration:
    """Creates (or takes over) the Node and keeps it alive.

    Guarantees: after :meth:`register` the Node exists with ``Ready=True`` and the agent's
    capacity (``pods`` = its cap); :meth:`run` renews the Lease every
    ``lease_renew_interval`` and refreshes the status every ``node_status_interval``, logging
    and retrying on errors, never raising; :meth:`mark_stopped` sets ``Ready=Unknown`` so that
    nobody mistakes a stopped agent for a live node (the node lifecycle controller, which would
    do that in a cluster, does not run in a bare control plane).
    """

    def __init__(self, client: Client, config: LocalNodeConfig) -> None:
        self._client = client
        self.config = config
        self.name = config.node_name
        self.uid: str | None = None
        self._boot_id = str(uuid.uuid4())
        self._ready_since = rfc3339()
        self._log = log.bind(node=self.name)
        self._capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{_memory_bytes() // 1024}Ki",
            "pods": str(config.max_pods),
        }

    def _status(
        self, *, ready: str = "True", reason: str = "KubeletReady", message: str = ""
    ) -> Object:
        now = rfc3339()

        def cond(type_: str, status: str, why: str, text: str, since: str) -> Object:
            return {
                "type": type_,
                "status": status,
                "reason": why,
                "message": text,
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }

        uname = platform.uname()
        since = self._ready_since
        return {
            "capacity": self._capacity,
            "allocatable": self._capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "", since),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "", since),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "", since),
                cond(
                    "Ready",
                    ready,
                    reason,
                    message or "the local node agent is posting ready status",
                    since if ready == "True" else now,
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.config.host_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": self._boot_id,
                "kernelVersion": uname.release,
                "osImage": f"{uname.system} (nexus local node)",
                "containerRuntimeVersion": "process://nexus-localnode",
                "kubeletVersion": AGENT_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _ARCH.get(uname.machine, uname.machine),
            },
        }

    def _labels(self) -> dict[str, str]:
        arch = _ARCH.get(platform.machine(), platform.machine())
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "type": "virtual-kubelet",
            LOCALNODE_LABEL: "true",
        }

    async def register(self) -> Object:
        """Create the Node, or adopt an existing one of that name; mark it Ready."""
        existing = await self._client.get_or_none(NODES, self.name)
        if existing is None:
            try:
                existing = await self._client.create(
                    NODES, {"metadata": {"name": self.name, "labels": self._labels()}, "spec": {}}
                )
                self._log.info("localnode.node.registered")
            except ApiError as exc:
                if not exc.already_exists:
                    raise
                existing = await self._client.get(NODES, self.name)
        else:
            await self._client.patch(NODES, self.name, {"metadata": {"labels": self._labels()}})
            self._log.info("localnode.node.adopted")
        self.uid = str(existing["metadata"]["uid"])
        node = await self._client.patch_status(NODES, self.name, self._status())
        await self._renew_lease()
        return node

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_status = loop.time() + self.config.node_status_interval
        while True:
            await asyncio.sleep(self.config.lease_renew_interval)
            try:
                await self._renew_lease()
                if loop.time() >= next_status:
                    await self._client.patch_status(NODES, self.name, self._status())
                    next_status = loop.time() + self.config.node_status_interval
            except ApiError as exc:
                if exc.not_found:
                    # Someone deleted the Node: register again, as a kubelet does.
                    self._log.warning("localnode.node.reregister")
                    with contextlib.suppress(ApiError, ConnectionError, OSError):
                        await self.register()
                else:
                    self._log.warning("localnode.node.heartbeat_failed", error=str(exc))
            except (ConnectionError, OSError) as exc:
                self._log.warning("localnode.node.heartbeat_failed", error=str(exc))

    async def _renew_lease(self) -> None:
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": self.config.lease_duration_seconds,
            "renewTime": micro_time(),
        }
        try:
            await self._client.patch(LEASES, self.name, {"spec": spec}, LEASE_NAMESPACE)
            return
        except ApiError as exc:
            if not exc.not_found:
                raise
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
        try:
            await self._client.create(
                LEASES,
                {
                    "metadata": {
                        "name": self.name,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [owner],
                    },
                    "spec": spec,
                },
            )
        except ApiError as exc:
            if exc.not_found:
                # No kube-node-lease namespace (a very old or trimmed control plane): the
                # Node's status heartbeats still say the node is alive.
                self._log.debug("localnode.node.no_lease_namespace")
                return
            if not exc.already_exists:
                raise

    async def mark_stopped(self) -> None:
        """Ready=Unknown: the agent no longer runs this node's pods. Best effort."""
        with contextlib.suppress(ApiError, ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await self._client.patch_status(
                    NODES,
                    self.name,
                    self._status(
                        ready="Unknown",
                        reason="NodeStatusUnknown",
                        message="the local node agent stopped",
                    ),
                )
