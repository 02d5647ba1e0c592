"""Mirror every source ConfigMap into each namespace labelled ``mirror.example.io/enabled=true``.

A source is a ConfigMap in the source namespace labelled ``mirror.example.io/source=true``.
Copies carry ``mirror.example.io/from=<source>`` so that editing or deleting a copy, or
(un)labelling a namespace, is repaired at once. Deleting the source removes every copy before
its finalizer is dropped. Written only against ``nexus.runtime``: it shows the whole surface.

Run it against any cluster: ``python -m examples.configmap_mirror.operator --source-namespace X``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from typing import Any

import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from nexus.runtime import (
    Builder,
    Manager,
    ManagerOptions,
    Request,
    Result,
    add_finalizer,
    enqueue_from_labels,
    has_finalizer,
    remove_finalizer,
)
from nexus.runtime.predicates import LabelChanged, Or, ResourceVersionChanged
from nexus.runtime.resource import CONFIGMAPS, NAMESPACES

log = structlog.get_logger("mirror")

SOURCE_LABEL = "mirror.example.io/source"
ENABLED_LABEL = "mirror.example.io/enabled"
FROM_LABEL = "mirror.example.io/from"
FINALIZER = "mirror.example.io/cleanup"


class MirrorReconciler:
    def __init__(self, mgr: Manager, source_namespace: str) -> None:
        self.mgr = mgr
        self.client = mgr.client
        self.source_namespace = source_namespace
        self.events = mgr.event_recorder("configmap-mirror")

    def _targets(self) -> list[str]:
        return sorted(
            ns["metadata"]["name"]
            for ns in self.mgr.cache.list(NAMESPACES)
            if (ns["metadata"].get("labels") or {}).get(ENABLED_LABEL) == "true"
            and not ns["metadata"].get("deletionTimestamp")
            and ns["metadata"]["name"] != self.source_namespace
        )

    def _copies(self, name: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.mgr.cache.list(CONFIGMAPS)
            if (c["metadata"].get("labels") or {}).get(FROM_LABEL) == name
        ]

    async def reconcile(self, request: Request) -> Result | None:
        source = self.mgr.cache.get(CONFIGMAPS, request.name, request.namespace)
        if source is None:
            return None
        if source["metadata"].get("deletionTimestamp"):
            for copy in self._copies(request.name):
                await self.client.delete(
                    CONFIGMAPS,
                    copy["metadata"]["name"],
                    copy["metadata"]["namespace"],
                    ignore_not_found=True,
                )
            await remove_finalizer(self.client, CONFIGMAPS, source, FINALIZER)
            return None
        if not has_finalizer(source, FINALIZER):
            source = await add_finalizer(self.client, CONFIGMAPS, source, FINALIZER)
        wanted = set(self._targets())
        existing = {c["metadata"]["namespace"]: c for c in self._copies(request.name)}
        for ns in sorted(wanted):
            mirrored = existing.get(ns)
            if mirrored is None:
                await self.client.create(
                    CONFIGMAPS,
                    {
                        "metadata": {
                            "name": request.name,
                            "namespace": ns,
                            "labels": {FROM_LABEL: request.name},
                        },
                        "data": source.get("data") or {},
                    },
                )
                self.events.normal(source, "Mirrored", f"copied into {ns}")
            elif mirrored.get("data") != source.get("data"):
                await self.client.patch(
                    CONFIGMAPS,
                    request.name,
                    {"data": source.get("data") or {}},
                    ns,
                    patch_type="merge",
                )
        for ns in set(existing) - wanted:
            await self.client.delete(CONFIGMAPS, request.name, ns, ignore_not_found=True)
        return None


def build(mgr: Manager, source_namespace: str) -> MirrorReconciler:
    reconciler = MirrorReconciler(mgr, source_namespace)

    def all_sources(_: dict[str, Any]) -> Iterable[Request]:
        return [
            Request(name=c["metadata"]["name"], namespace=source_namespace)
            for c in mgr.cache.list(CONFIGMAPS, source_namespace)
            if (c["metadata"].get("labels") or {}).get(SOURCE_LABEL) == "true"
        ]

    # Copies may live in any namespace; one cluster-wide informer serves sources and copies.
    (
        Builder(mgr)
        .named("configmap-mirror")
        .for_(CONFIGMAPS, _IsSource(source_namespace))
        .watches(CONFIGMAPS, enqueue_copy_source(source_namespace))
        .watches(NAMESPACES, all_sources, Or(LabelChanged(), ResourceVersionChanged()))
        .complete(reconciler)
    )
    return reconciler


class _IsSource:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def _ok(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return (
            meta.get("namespace") == self.namespace
            and (meta.get("labels") or {}).get(SOURCE_LABEL) == "true"
        )

    def create(self, obj: dict[str, Any]) -> bool:
        return self._ok(obj)

    def update(self, old: dict[str, Any], new: dict[str, Any]) -> bool:
        return self._ok(new)

    def delete(self, obj: dict[str, Any]) -> bool:
        return self._ok(obj)


def enqueue_copy_source(source_namespace: str) -> Any:
    by_label = enqueue_from_labels(FROM_LABEL)

    def mapper(obj: dict[str, Any]) -> Iterable[Request]:
        return [Request(name=r.name, namespace=source_namespace) for r in by_label(obj)]

    return mapper


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source-namespace", default="default")
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    cfg = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    async with k8s_client.ApiClient(cfg) as api:
        mgr = Manager(api, ManagerOptions(metrics_bind_address="0"))
        build(mgr, args.source_namespace)
        await mgr.run()


if __name__ == "__main__":
    asyncio.run(main())
