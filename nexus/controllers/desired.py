"""Desired child objects of a tenant, and the comparison that decides whether to write."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from nexus.domain.resources import MANAGED_LABEL, TENANT_LABEL, TENANT_NAMESPACE_LABEL
from nexus.domain.tenant import TenantSpec
from nexus.node import NODE_NAME, NODE_PORT
from nexus.runtime.objects import Object
from nexus.runtime.quantity import parse_quantity

APP_LABEL = "app.kubernetes.io/name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def child_labels(tenant: Object) -> dict[str, str]:
    meta = tenant["metadata"]
    return {
        TENANT_LABEL: meta["name"],
        TENANT_NAMESPACE_LABEL: meta["namespace"],
        MANAGED_BY_LABEL: "nexus",
    }


def namespace(tenant: Object) -> Object:
    return {
        "metadata": {
            "name": tenant["metadata"]["name"],
            "labels": {MANAGED_LABEL: "true", **child_labels(tenant)},
        }
    }


def node_deployment(tenant: Object, image: str) -> Object:
    spec = TenantSpec.of(tenant)
    limits = spec.quota.limits
    selector = {APP_LABEL: NODE_NAME, TENANT_LABEL: tenant["metadata"]["name"]}
    probe = {"httpGet": {"path": "/v1/health", "port": NODE_PORT}}
    container: Object = {
        "name": NODE_NAME,
        "image": image,
        "ports": [{"name": "http", "containerPort": NODE_PORT, "protocol": "TCP"}],
        "env": [{"name": "ASTROMESH_ROLE", "value": spec.node_profile}],
        "livenessProbe": probe,
        "readinessProbe": probe,
        "resources": {"limits": limits} if limits else {},
    }
    return {
        "metadata": {
            "name": NODE_NAME,
            "namespace": tenant["metadata"]["name"],
            "labels": {APP_LABEL: NODE_NAME, **child_labels(tenant)},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, MANAGED_BY_LABEL: "nexus"}},
                "spec": {"containers": [container]},
            },
        },
    }


def node_service(tenant: Object) -> Object:
    return {
        "metadata": {
            "name": NODE_NAME,
            "namespace": tenant["metadata"]["name"],
            "labels": {APP_LABEL: NODE_NAME, **child_labels(tenant)},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {APP_LABEL: NODE_NAME, TENANT_LABEL: tenant["metadata"]["name"]},
            "ports": [
                {"name": "http", "port": NODE_PORT, "targetPort": NODE_PORT, "protocol": "TCP"}
            ],
        },
    }


def is_subset(desired: Any, live: Any, *, path: str = "") -> bool:
    """True when every field we set has the same value in the live object.

    Fields the API server defaults (probe timeouts, imagePullPolicy, clusterIP, ...) are not
    ours and are ignored; lists must match element for element. Resource quantities compare
    by value, since the server normalises them ("0.5" -> "500m").
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(is_subset(v, live.get(k), path=f"{path}.{k}") for k, v in desired.items()) and (
            path not in _EXACT_MAPS or set(desired) == set(live)
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v, path=path) for d, v in zip(desired, live, strict=True))
        )
    if path.endswith((".limits.cpu", ".limits.memory")):
        return _quantity(desired) == _quantity(live)
    return bool(desired == live)


# Maps whose extra keys matter: a limit that was removed from the quota must go away too.
_EXACT_MAPS = frozenset({".spec.template.spec.containers.resources.limits"})


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except (ValueError, TypeError):
        return None
