"""The fence around a tenant namespace: network policies, quota, container defaults, identity.

Pure functions tenant -> desired object, like ``desired``; the tenant reconciler compares them
with the live objects and writes only what differs. Every object lives in the tenant's
namespace and goes away with it.

- Ingress is denied by default; the node's port admits only the Nexus manager's pods (label
  ``nexus.astromesh.io/manager`` on both their namespace and themselves) and any extra CIDRs
  (the API server, when the manager reaches nodes through its service proxy).
- Egress: DNS anywhere, and the allowed ranges (default: the IPv4 internet) minus the private
  ones: the cluster's pod and service ranges and the cloud metadata address.
- The tenant's cpu/memory become the namespace's quota; a LimitRange gives containers
  without limits defaults within that quota, so that they are admitted.
- The node runs under its own ServiceAccount, with no API token.

A NetworkPolicy is enforced only by a CNI plugin that implements it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from nexus.controllers.desired import (
    APP_LABEL,
    NODE_REPLICAS,
    NODE_SERVICE_ACCOUNT,
    child_labels,
)
from nexus.domain.resources import MANAGER_LABEL, TENANT_LABEL
from nexus.node import NODE_NAME, NODE_PORT
from nexus.runtime.objects import Object
from nexus.runtime.quantity import parse_quantity
from nexus.runtime.resource import (
    LIMIT_RANGES,
    NETWORK_POLICIES,
    RESOURCE_QUOTAS,
    SERVICE_ACCOUNTS,
    Resource,
)

Network = IPv4Network | IPv6Network

DENY_INGRESS = "nexus-default-deny-ingress"
NODE_INGRESS = "nexus-node-ingress"
EGRESS = "nexus-egress"
QUOTA = "nexus-quota"
LIMITS = "nexus-limits"

#: Container defaults of the LimitRange, each capped by the tenant's quota.
DEFAULT_LIMITS = {"cpu": "500m", "memory": "512Mi"}
DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}


@dataclass(frozen=True)
class FenceSettings:
    #: The cluster's pod and service ranges: tenant pods must not reach other pods directly.
    pod_cidrs: tuple[str, ...] = ("10.244.0.0/16",)
    service_cidrs: tuple[str, ...] = ("10.96.0.0/12",)
    #: Other ranges denied to tenant egress (the cloud metadata service, ...).
    egress_deny_cidrs: tuple[str, ...] = ("169.254.169.254/32",)
    #: What tenant egress may reach, minus the denied ranges.
    egress_allow_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    #: Extra sources admitted to the node's port, besides the manager's pods.
    node_ingress_cidrs: tuple[str, ...] = ()


def children(tenant: Object, settings: FenceSettings) -> list[tuple[Resource, Object]]:
    """Everything of the fence, in the order to create it: all of it before the node exists."""
    return [
        (SERVICE_ACCOUNTS, service_account(tenant)),
        *((NETWORK_POLICIES, p) for p in network_policies(tenant, settings)),
        (RESOURCE_QUOTAS, resource_quota(tenant)),
        (LIMIT_RANGES, limit_range(tenant)),
    ]


def _meta(tenant: Object, name: str) -> Object:
    return {
        "name": name,
        "namespace": tenant["metadata"]["name"],
        "labels": child_labels(tenant),
    }


def service_account(tenant: Object) -> Object:
    return {
        "metadata": _meta(tenant, NODE_SERVICE_ACCOUNT),
        "automountServiceAccountToken": False,
    }


# -- network -------------------------------------------------------------------------------


def network_policies(tenant: Object, settings: FenceSettings) -> list[Object]:
    node_pods = {APP_LABEL: NODE_NAME, TENANT_LABEL: tenant["metadata"]["name"]}
    manager = {"matchLabels": {MANAGER_LABEL: "true"}}
    sources: list[Object] = [{"namespaceSelector": manager, "podSelector": manager}]
    ingress_cidrs, egress_cidrs = _ranges(settings)
    sources += [{"ipBlock": {"cidr": c}} for c in ingress_cidrs]
    blocks: list[Object] = [
        {"ipBlock": {"cidr": c, "except": list(e)} if e else {"cidr": c}} for c, e in egress_cidrs
    ]
    # Pods resolve names through the cluster DNS, whose address is inside the denied ranges.
    egress: list[Object] = [{"ports": [_port(53, "UDP"), _port(53, "TCP")]}]
    if blocks:
        egress.append({"to": blocks})
    return [
        {
            # No rule at all (an empty list, so that a rule added by hand is removed): every
            # pod of the namespace refuses all ingress but what the policies below admit.
            "metadata": _meta(tenant, DENY_INGRESS),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []},
        },
        {
            "metadata": _meta(tenant, NODE_INGRESS),
            "spec": {
                "podSelector": {"matchLabels": node_pods},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": sources, "ports": [_port(NODE_PORT, "TCP")]}],
            },
        },
        {
            "metadata": _meta(tenant, EGRESS),
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress},
        },
    ]


@functools.cache
def _ranges(
    settings: FenceSettings,
) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    """The node's extra ingress sources, and the egress blocks as (cidr, except) pairs.

    They depend on the settings alone, and each tenant's every pass needs them: worked out
    once (as strings, so that every desired object still gets dicts of its own).
    """
    deny = [
        *_networks(settings.pod_cidrs),
        *_networks(settings.service_cidrs),
        *_networks(settings.egress_deny_cidrs),
    ]
    blocks = egress_blocks(_networks(settings.egress_allow_cidrs), deny)
    return (
        tuple(str(n) for n in _networks(settings.node_ingress_cidrs)),
        tuple((b["ipBlock"]["cidr"], tuple(b["ipBlock"].get("except", ()))) for b in blocks),
    )


def egress_blocks(allow: Sequence[Network], deny: Sequence[Network]) -> list[Object]:
    """ipBlock peers: each allowed range, except the denied ranges inside it.

    A denied range that covers an allowed one removes it; one outside every allowed range is
    denied already. ``except`` entries must lie strictly inside their ``cidr``.
    """
    peers: list[Object] = []
    for net in dict.fromkeys(allow):
        same = [d for d in deny if d.version == net.version]
        if any(net.subnet_of(d) for d in same):  # type: ignore[arg-type]
            continue
        inside = sorted(
            {d for d in same if d.subnet_of(net)},  # type: ignore[arg-type]
            key=lambda d: (d.network_address, d.prefixlen),
        )
        block: Object = {"cidr": str(net)}
        if inside:
            block["except"] = [str(d) for d in inside]
        peers.append({"ipBlock": block})
    return peers


def parse_cidrs(value: str | Sequence[str]) -> tuple[str, ...]:
    """Comma-separated CIDRs in canonical form ("10.0.0.1/8" -> "10.0.0.0/8").

    Raises ValueError for anything that is not a CIDR.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(ip_network(item.strip(), strict=False)) for item in items if item.strip())


def _networks(cidrs: Sequence[str]) -> list[Network]:
    return [ip_network(c, strict=False) for c in cidrs]


def _port(port: int, protocol: str) -> Object:
    return {"protocol": protocol, "port": port}


# -- quota ---------------------------------------------------------------------------------


def _tenant_quota(tenant: Object) -> dict[str, str]:
    quota = (tenant.get("spec") or {}).get("resourceQuota") or {}
    out = {}
    for key in ("cpu", "memory"):
        value = quota.get(key)
        if value not in (None, "") and _parses(value):
            out[key] = str(value)
    return out


def resource_quota(tenant: Object) -> Object:
    """The tenant's cpu and memory for the whole namespace, and room for the node's pods.

    The node Deployment rolls out with Recreate (no surge), so its replicas are all the pods
    the namespace ever needs. Requests can never exceed limits; they are listed so that
    ``kubectl describe quota`` shows both.
    """
    hard = {"pods": str(NODE_REPLICAS)}
    for key, value in _tenant_quota(tenant).items():
        hard[f"limits.{key}"] = value
        hard[f"requests.{key}"] = value
    return {"metadata": _meta(tenant, QUOTA), "spec": {"hard": hard}}


def limit_range(tenant: Object) -> Object:
    """Defaults for containers that state no limits, so that the quota still admits them."""
    quota = _tenant_quota(tenant)
    return {
        "metadata": _meta(tenant, LIMITS),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": _capped(DEFAULT_LIMITS, quota),
                    "defaultRequest": _capped(DEFAULT_REQUESTS, quota),
                }
            ]
        },
    }


def _capped(defaults: dict[str, str], quota: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in defaults.items():
        cap = quota.get(key)
        out[key] = cap if cap is not None and parse_quantity(cap) < parse_quantity(value) else value
    return out


def _parses(value: Any) -> bool:
    try:
        parse_quantity(value)
    except (ValueError, TypeError):
        return False
    return True
