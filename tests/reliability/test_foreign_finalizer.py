"""Case 8: another controller's finalizer on NexusTenants.

Nexus adds and removes only its own finalizer (JSON patches guarded by ``test``), so a foreign
finalizer added before, or at the same moment as, ours survives; on deletion Nexus removes its
finalizer once the tenant namespace is gone, exactly once, and the tenant then waits, with its
deletionTimestamp set, for the other controller.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from nexus.domain.resources import TENANT_FINALIZER, TENANTS
from nexus.runtime.client import ApiError, Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES

from ..support.faults import NexusManager, Object, eventually, phase_of, tenant_body
from .conftest import make_system_namespace, purge, short_id

pytestmark = pytest.mark.cluster

FOREIGN = "other.example.com/hold"
RACERS = 16


async def add_foreign(kube: Client, name: str, ns: str, seen: Object | None = None) -> None:
    """What a well-behaved other controller does: append, guarded by the resourceVersion.

    ``seen`` is a copy already read (the answer to the create), used for the first attempt.
    """
    for _ in range(20):
        obj = seen or await kube.get(TENANTS, name, ns)
        seen = None
        meta = obj["metadata"]
        finalizers = meta.get("finalizers") or []
        if FOREIGN in finalizers:
            return
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FOREIGN}
            if finalizers
            else {"op": "add", "path": "/metadata/finalizers", "value": [FOREIGN]},
        ]
        try:
            await kube.patch(TENANTS, name, ops, ns, patch_type="json")
            return
        except ApiError as exc:
            if not (exc.invalid or exc.conflict):
                raise
    raise AssertionError(f"could not add {FOREIGN} to {name}")


async def remove_foreign(kube: Client, name: str, ns: str) -> None:
    for _ in range(20):
        obj = await kube.get(TENANTS, name, ns)
        finalizers = obj["metadata"].get("finalizers") or []
        if FOREIGN not in finalizers:
            return
        i = finalizers.index(FOREIGN)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{i}", "value": FOREIGN},
            {"op": "remove", "path": f"/metadata/finalizers/{i}"},
        ]
        try:
            await kube.patch(TENANTS, name, ops, ns, patch_type="json")
            return
        except ApiError as exc:
            if not (exc.invalid or exc.conflict):
                raise
    raise AssertionError(f"could not remove {FOREIGN} from {name}")


async def test_foreign_finalizer_survives_and_holds_the_deletion(
    envtest: Environment, kube: Client, tmp_path: Path
) -> None:
    system_ns = await make_system_namespace(kube, "foreign")
    uid = short_id()
    mgr = NexusManager(
        envtest.kubeconfig_path, tmp_path / "mgr", extra=[f"--namespace={system_ns}"]
    )
    early = f"g{uid}-early"
    racers = [f"g{uid}-race-{i}" for i in range(RACERS)]
    names = [early, *racers]

    async def finalizers(name: str) -> list[str]:
        obj = await kube.get_or_none(TENANTS, name, system_ns)
        return list((obj or {}).get("metadata", {}).get("finalizers") or [])

    try:
        await mgr.start()
        # One tenant carries the foreign finalizer from birth; the others get it while Nexus
        # adds its own.
        body = tenant_body(early, system_ns)
        body["metadata"]["finalizers"] = [FOREIGN]
        await kube.create(TENANTS, body)

        async def create_and_race(name: str) -> None:
            created = await kube.create(TENANTS, tenant_body(name, system_ns))
            # Land around the moment Nexus adds its own, from a copy it may not have seen.
            await asyncio.sleep(random.uniform(0, 0.015))
            await add_foreign(kube, name, system_ns, created)

        await asyncio.gather(*(create_and_race(n) for n in racers))
        for name in names:
            await eventually(lambda n=name: _ready(kube, n, system_ns), timeout=20, message=name)
        for name in names:
            assert sorted(await finalizers(name)) == sorted([FOREIGN, TENANT_FINALIZER]), name

        # Half are deleted in the foreground (the API server adds foregroundDeletion, which the
        # garbage collector removes concurrently: list indexes shift under our patches).
        for i, name in enumerate(names):
            policy = "Foreground" if i % 2 else None
            await kube.delete(TENANTS, name, system_ns, propagation_policy=policy)

        async def only_foreign_left() -> bool:
            for name in names:
                obj = await kube.get_or_none(TENANTS, name, system_ns)
                if obj is None:
                    raise AssertionError(f"{name} vanished while {FOREIGN} was still on it")
                left = obj["metadata"].get("finalizers") or []
                if left != [FOREIGN] or await kube.get_or_none(NAMESPACES, name) is not None:
                    return False
            return True

        await eventually(only_foreign_left, timeout=45, message="Nexus finalizer removed")
        await asyncio.sleep(1.5)  # nothing else happens while the other controller holds on
        for name in names:
            obj = await kube.get(TENANTS, name, system_ns)
            assert obj["metadata"]["deletionTimestamp"]
            assert obj["metadata"]["finalizers"] == [FOREIGN]

        for name in names:
            await remove_foreign(kube, name, system_ns)
        await eventually(lambda: _none_left(kube, names, system_ns), timeout=15, message="gone")
        removed = [json.loads(line)["tenant"] for line in mgr.log_lines("tenant.deleted")]
        assert sorted(removed) == sorted(names), "Nexus removed its finalizer more than once"
        assert not mgr.log_lines("reconcile.error"), mgr.log_lines("reconcile.error")[:3]
    finally:
        code = await mgr.stop()
        await purge(kube, system_ns)
    assert code == 0, mgr.log_tail()


async def _ready(kube: Client, name: str, ns: str) -> bool:
    return phase_of(await kube.get_or_none(TENANTS, name, ns)) == "Ready"


async def _none_left(kube: Client, names: list[str], ns: str) -> bool:
    for name in names:
        if await kube.get_or_none(TENANTS, name, ns) is not None:
            return False
    return True
