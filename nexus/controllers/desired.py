"""Desired child objects of a tenant, and the comparison that decides whether to write."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from nexus.controllers import restricted
from nexus.domain.resources import MANAGED_LABEL, TENANT_LABEL, TENANT_NAMESPACE_LABEL
from nexus.domain.tenant import TenantSpec
from nexus.node import NODE_NAME, NODE_PORT
from nexus.runtime.objects import Object
from nexus.runtime.quantity import parse_quantity

APP_LABEL = "app.kubernetes.io/name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

#: Pod Security admission (1.23+) enforces the restricted profile in tenant namespaces; older
#: clusters ignore the labels.
POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
NODE_REPLICAS = 1
#: The node's own ServiceAccount, with no token: the node never calls the Kubernetes API.
NODE_SERVICE_ACCOUNT = NODE_NAME


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
            "labels": {MANAGED_LABEL: "true", **child_labels(tenant), **POD_SECURITY_LABELS},
        }
    }


def node_deployment(tenant: Object, image: str, *, run_as_user: int = 65532) -> Object:
    spec = TenantSpec.of(tenant)
    limits = spec.quota.limits
    selector = {APP_LABEL: NODE_NAME, TENANT_LABEL: tenant["metadata"]["name"]}
    probe = {"httpGet": {"path": "/v1/health", "port": NODE_PORT}}
    container: Object = {
        "name": NODE_NAME,
        "image": image,
        "ports": [{"name": "http", "containerPort": NODE_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "ASTROMESH_ROLE", "value": spec.node_profile},
            *restricted.env(),
        ],
        "livenessProbe": probe,
        "readinessProbe": probe,
        "resources": {"limits": limits} if limits else {},
        "securityContext": restricted.container_security_context(),
        "volumeMounts": restricted.volume_mounts(),
    }
    return {
        "metadata": {
            "name": NODE_NAME,
            "namespace": tenant["metadata"]["name"],
            "labels": {APP_LABEL: NODE_NAME, **child_labels(tenant)},
        },
        "spec": {
            "replicas": NODE_REPLICAS,
            # The node's limits are the whole namespace quota, so a surge pod could never be
            # admitted and a rolling update would stall: the old pod goes first.
            "strategy": {"type": "Recreate", "rollingUpdate": None},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, MANAGED_BY_LABEL: "nexus"}},
                "spec": {
                    "serviceAccountName": NODE_SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "securityContext": restricted.pod_security_context(run_as_user),
                    "initContainers": [restricted.config_seed(image, container["resources"])],
                    "containers": [container],
                    "volumes": restricted.volumes(),
                },
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
        if path in _EXACT_MAPS and set(desired) != set(live):
            return False
        if path in _QUANTITY_MAPS:
            return all(_same_quantity(v, live.get(k)) for k, v in desired.items())
        return all(is_subset(v, live.get(k), path=f"{path}.{k}") for k, v in desired.items())
    if isinstance(desired, list):
        if not desired and live is None:
            return True  # the server omits empty lists; sending [] still clears a live one
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v, path=path) for d, v in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def merge_patch(desired: Any, live: Any, *, path: str = "") -> Any:
    """``desired`` as a JSON merge patch on ``live``: what an exact map has beyond ours is
    deleted (set to null). Lists need nothing: a merge patch replaces them whole."""
    if not isinstance(desired, dict) or not isinstance(live, dict):
        return desired
    out = {k: merge_patch(v, live.get(k), path=f"{path}.{k}") for k, v in desired.items()}
    if path in _EXACT_MAPS:
        out.update({k: None for k in live if k not in desired})
    return out


_POD = ".spec.template.spec"
_CONTAINERS = (f"{_POD}.containers", f"{_POD}.initContainers")
# Maps whose extra keys matter: a limit that was removed from the quota must go away too, and
# a field added to a security context or a policy's selector widens what we granted.
_EXACT_MAPS = frozenset(
    {
        *(f"{c}.resources.limits" for c in _CONTAINERS),
        *(f"{c}.securityContext" for c in _CONTAINERS),
        *(f"{c}.securityContext.capabilities" for c in _CONTAINERS),
        f"{_POD}.securityContext",
        ".spec.hard",  # ResourceQuota
        ".spec.limits.default",  # LimitRange
        ".spec.limits.defaultRequest",
        ".spec.podSelector",  # NetworkPolicy
    }
)
# Maps of resource quantities (their keys may hold dots: "limits.cpu" in a ResourceQuota).
_QUANTITY_MAPS = frozenset(
    {
        *(f"{c}.resources.{kind}" for c in _CONTAINERS for kind in ("limits", "requests")),
        ".spec.hard",
        ".spec.limits.default",
        ".spec.limits.defaultRequest",
    }
)


def _same_quantity(desired: Any, live: Any) -> bool:
    want = _quantity(desired)
    return desired == live if want is None else want == _quantity(live)


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except (ValueError, TypeError):
        return None
