"""What the manager's cache keeps of each kind the controllers watch.

The cache holds every tenant's children for as long as they exist, so what it keeps of each
is paid per tenant. The tenant reconciler reads a child for two things: whether it exists
(and is being deleted), and whether the fields Nexus sets still have the values it set
(``desired.is_subset``, then ``desired.merge_patch``). So a child keeps its metadata and,
of the rest, the fields of its desired object. The masks are derived from the desired
objects themselves, built from sample tenants with this manager's settings, so that a field
added to a desired object is kept in the cache without a second list to maintain; maps whose
extra keys matter to the comparison are kept whole. Fields the API server defaulted or other
controllers wrote (probe timeouts, ``clusterIP``, quota usage) are dropped.

Besides: a Deployment keeps its status (the node's availability); a node Pod its metadata and
status; a Namespace is watched as metadata alone; NexusTenants and NexusAgents keep
everything but ``managedFields`` and kubectl's copy of the last applied object. Strings are
shared between all cached objects (``Cache.strings``), and so are equal ``spec`` subtrees of
children: those are frozen (changing one raises ``TypeError``), as every cached object is
read-only anyway.
"""

from __future__ import annotations

from collections.abc import Iterable

from nexus.controllers import desired, fence
from nexus.controllers.tenant import TenantSettings
from nexus.domain.resources import AGENTS, TENANTS
from nexus.runtime.cache import Cache
from nexus.runtime.objects import Object
from nexus.runtime.resource import DEPLOYMENTS, NAMESPACES, PODS, SERVICES, Resource
from nexus.runtime.transform import (
    METADATA,
    Mask,
    StringPool,
    Transform,
    keep,
    mask_of,
    merge_masks,
    shared,
)

#: Set by ``kubectl apply``: a second copy of the object, which no reader here uses.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

#: Status that the tenant controller reads (the node Deployment's availability).
_STATUS: dict[Resource, Mask | bool] = {DEPLOYMENTS: True}
_SHARED_FIELDS = frozenset({"spec"})
#: A node pod is read for its identity, age, labels and status (readiness, address, restarts,
#: why it waits: ``nexus.node.pods``, ``availability``); its spec is the Deployment's template.
_POD: Mask = {"metadata": METADATA, "status": True}


def sample_tenants(system_namespace: str) -> list[Object]:
    """Tenants that between them make every field a desired child can have."""
    quotas: list[Object] = [{}, {"maxAgents": 10, "cpu": "1", "memory": "1Gi"}]
    return [
        {
            "metadata": {"name": "sample", "namespace": system_namespace, "uid": "sample"},
            "spec": {"displayName": "sample", "nodeProfile": "full", "resourceQuota": quota},
        }
        for quota in quotas
    ]


def children(tenant: Object, settings: TenantSettings) -> list[tuple[Resource, Object]]:
    """Every child the tenant reconciler writes for ``tenant``, as it builds them."""
    return [
        (NAMESPACES, desired.namespace(tenant)),
        *fence.children(tenant, settings.fence),
        (
            DEPLOYMENTS,
            desired.node_deployment(
                tenant, settings.node_image, run_as_user=settings.node_run_as_user
            ),
        ),
        (SERVICES, desired.node_service(tenant)),
    ]


def child_masks(
    settings: TenantSettings, tenants: Iterable[Object] | None = None
) -> dict[Resource, Mask]:
    """Per child kind: its metadata, the fields of its desired objects, its status if read."""
    found: dict[Resource, list[Mask | bool]] = {}
    for tenant in tenants if tenants is not None else sample_tenants(settings.system_namespace):
        for res, obj in children(tenant, settings):
            # The comparison's exact maps are kept whole: keys Nexus did not set matter there.
            owned = {
                key: mask_of(value, whole=desired._EXACT_MAPS, path=f".{key}")
                for key, value in obj.items()
                if key != "metadata"
            }
            found.setdefault(res, []).append(owned)
    masks: dict[Resource, Mask] = {}
    for res, found_masks in found.items():
        merged = merge_masks(found_masks)
        assert not isinstance(merged, bool)
        mask: dict[str, Mask | bool] = {**merged, "metadata": METADATA}
        if res in _STATUS:
            mask["status"] = _STATUS[res]
        masks[res] = mask
    return masks


def without_last_applied(obj: Object) -> Object:
    annotations = (obj.get("metadata") or {}).get("annotations")
    if annotations and LAST_APPLIED in annotations:
        del annotations[LAST_APPLIED]
        if not annotations:
            del obj["metadata"]["annotations"]
    return obj


def transforms(settings: TenantSettings, pool: StringPool) -> dict[Resource, Transform]:
    """The transform of each kind the controllers watch (others keep the cache's default)."""
    out: dict[Resource, Transform] = {
        # What Nexus sets is the same for many tenants (a pod template differs only by the
        # tenant's name in its labels): shared between them.
        res: keep(mask, pool, frozen=_SHARED_FIELDS)
        for res, mask in child_masks(settings).items()
    }
    out[PODS] = keep(_POD, pool)
    everything_but = shared(pool)

    def own_kinds(obj: Object) -> Object:
        return everything_but(without_last_applied(obj))

    out[TENANTS] = out[AGENTS] = own_kinds
    return out


def configure_cache(cache: Cache, settings: TenantSettings) -> None:
    """Registers the transforms on ``cache``; call before the controllers ask for informers."""
    for res, transform in transforms(settings, cache.strings).items():
        # A namespace's desired object is metadata alone: nothing else of it is ever read.
        cache.configure(res, transform=transform, metadata_only=res is NAMESPACES)
