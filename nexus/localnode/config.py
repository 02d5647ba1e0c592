"""Settings of the local node agent."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The pods the agent runs: those of astromesh node Deployments, which carry this label
#: (``app.kubernetes.io/name: astromesh-node`` on the Deployment's pod template).
DEFAULT_SELECTOR = "app.kubernetes.io/name=astromesh-node"
DEFAULT_NODE_NAME = "nexus-local"
DEFAULT_ADDRESS_RANGE = "127.0.100.0/24"


@dataclass(frozen=True, slots=True)
class LocalNodeConfig:
    """How the agent presents itself and runs pods. Defaults suit ``make dev``.

    ``command`` is a template of the process to run for each pod: ``{host}`` and ``{port}``
    are replaced by the pod's address and container port. By default it is the astromesh
    node from the PyPI package, run by ``python`` under uvicorn.
    """

    node_name: str = DEFAULT_NODE_NAME
    #: Pod addresses: a 127.0.0.0/8 network (``127.0.100.0/24``) or ``first-last`` range.
    address_range: str = DEFAULT_ADDRESS_RANGE
    #: The node's own address (``status.hostIP`` of its pods).
    host_ip: str = "127.0.0.1"
    #: Pod folders live under ``root/pods``; default: a folder in the system temp dir.
    root: Path | None = None
    #: Pods beyond this many stay Pending (event reason ``NodeCapacity``).
    max_pods: int = 20
    label_selector: str = DEFAULT_SELECTOR
    #: Only pods in namespaces matching this label selector are scheduled here (None: any).
    #: One Nexus's tenant namespaces carry ``nexus.astromesh.io/tenant-namespace=<its
    #: namespace>``, so that an agent can serve one Nexus among several on a control plane.
    namespace_selector: str | None = None
    command: Sequence[str] | None = None
    python: str = sys.executable
    #: uvicorn's log level for the node processes (their output goes to the pod's folder).
    node_log_level: str = "warning"
    #: Crash-loop backoff: ``base`` seconds before the first restart, doubling up to ``cap``;
    #: forgotten once a container ran for ``reset_after`` seconds (kubelet: 10 s, 5 min, 10 min).
    restart_backoff_base: float = 10.0
    restart_backoff_cap: float = 300.0
    restart_backoff_reset_after: float = 600.0
    #: Node heartbeats: the Lease in ``kube-node-lease`` and the Node's status.
    lease_duration_seconds: int = 40
    lease_renew_interval: float = 10.0
    node_status_interval: float = 60.0
    #: Grace period for the processes when the agent itself stops.
    shutdown_grace: float = 10.0
    #: How often a pod kept Pending (cap reached) is tried again, besides when a slot frees.
    pending_retry: float = 30.0
    #: Parallel reconciles of pod events (processes run in their own tasks regardless).
    workers: int = 4
    #: Extra environment for every node process (after the agent's own environment).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def root_dir(self) -> Path:
        return self.root or Path(tempfile.gettempdir()) / f"nexus-localnode-{self.node_name}"

    def __post_init__(self) -> None:
        if self.max_pods < 0:
            raise ValueError("max_pods must be >= 0")
        if self.restart_backoff_base <= 0 or self.restart_backoff_cap < self.restart_backoff_base:
            raise ValueError("need 0 < restart_backoff_base <= restart_backoff_cap")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
