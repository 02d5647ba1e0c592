"""A local node agent: runs the astromesh node pods of a control plane without kubelets.

The virtual-kubelet pattern on one machine: :class:`LocalNodeAgent` registers a Node, binds
the pods of astromesh node Deployments to it and runs each as a local process (the astromesh
runtime under uvicorn) on a loopback address of its own, with its own folder. It probes them
with the pods' own probes and writes pod status, so that the controller manager computes each
Deployment's availability as in a cluster. It depends on :mod:`nexus.runtime` only.

Usable as ``nexus localnode`` / ``python -m nexus.localnode`` or in-process
(``async with LocalNodeAgent(api_client, LocalNodeConfig(...))``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexus.localnode.agent import REASON_CAPACITY, LocalNodeAgent
    from nexus.localnode.config import DEFAULT_SELECTOR, LocalNodeConfig
    from nexus.localnode.worker import PodInfo

__all__ = ["DEFAULT_SELECTOR", "REASON_CAPACITY", "LocalNodeAgent", "LocalNodeConfig", "PodInfo"]

# Imported on first use: ``nexus --help`` and the tenant CLI load this package's command-line
# module, and must not pay for the agent's dependencies (kubernetes-asyncio, aiohttp).
_HOME = {
    "DEFAULT_SELECTOR": "config",
    "LocalNodeConfig": "config",
    "REASON_CAPACITY": "agent",
    "LocalNodeAgent": "agent",
    "PodInfo": "worker",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
